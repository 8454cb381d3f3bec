"""Choosing K viewpoints per clip: random, toward sound sources, toward detected objects, toward labelled
sound events (datasets with labels, e.g. STARSS23), or a mix.

Every sampler returns ``(azimuth, elevation)`` as float64 arrays of shape ``[K]`` in radians, keeps
elevations within ±``max_elevation`` and, whenever the band has room, keeps every pair of viewpoints at
least ``min_separation`` apart on the sphere. Randomness comes only from the ``numpy.random.Generator``
passed in, so a seed reproduces the choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from dataloading.config import ViewpointSampler
from dataloading.foa import beam_weights, direction_vector

Directions = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Cues:
    """What a clip says about where to look: directions ``[M, 2]`` (azimuth, elevation; radians) of its
    detected ``objects`` and of its labelled sound events (``labels``; absent for unlabelled datasets),
    and its ``foa`` audio ``[4, samples]``, whose loudest directions the sound-peak samplers use."""

    objects: np.ndarray | None = None
    foa: np.ndarray | torch.Tensor | None = None
    labels: np.ndarray | None = None


# Random draws per attempt and attempts per viewpoint before the separation is relaxed.
_DRAWS, _ATTEMPTS = 64, 16


def angular_distance(az_a: np.ndarray, el_a: np.ndarray, az_b: np.ndarray, el_b: np.ndarray) -> np.ndarray:
    """Great-circle angle in radians between directions (broadcasting)."""
    a = direction_vector(torch.as_tensor(az_a), torch.as_tensor(el_a))
    b = direction_vector(torch.as_tensor(az_b), torch.as_tensor(el_b))
    dot = (a * b).sum(-1).numpy()
    return np.arccos(np.clip(dot, -1.0, 1.0))


def _random_directions(n: int, rng: np.random.Generator, max_elevation: float) -> Directions:
    """Uniform on the sphere within the elevation band: sin(elevation) is uniform there."""
    azimuth = rng.uniform(-math.pi, math.pi, n)
    bound = math.sin(max_elevation)
    return azimuth, np.arcsin(rng.uniform(-bound, bound, n))


def _select(
    candidates: Directions, k: int, rng: np.random.Generator, max_elevation: float, min_separation: float
) -> Directions:
    """Take candidates in order when far enough from those taken, then fill up with random directions.

    Candidates outside the elevation band are clamped into it (the view still looks toward them).
    If random draws cannot find room (too many viewpoints for the separation), the draw farthest
    from the chosen ones is taken instead of looping forever.
    """
    az_out: list[float] = []
    el_out: list[float] = []

    def distance_to_chosen(az: np.ndarray, el: np.ndarray) -> np.ndarray:
        if not az_out:
            return np.full(np.shape(az), np.inf)
        return angular_distance(az[..., None], el[..., None], np.array(az_out), np.array(el_out)).min(-1)

    cand_az, cand_el = candidates
    for az, el in zip(cand_az, np.clip(cand_el, -max_elevation, max_elevation), strict=True):
        if len(az_out) == k:
            break
        if distance_to_chosen(np.array(az), np.array(el)) >= min_separation:
            az_out.append(float(az))
            el_out.append(float(el))
    while len(az_out) < k:
        best: tuple[float, float, float] | None = None
        for _ in range(_ATTEMPTS):
            az, el = _random_directions(_DRAWS, rng, max_elevation)
            dist = distance_to_chosen(az, el)
            i = (
                int(np.argmax(dist >= min_separation))
                if (dist >= min_separation).any()
                else int(dist.argmax())
            )
            if best is None or dist[i] > best[0]:
                best = (float(dist[i]), float(az[i]), float(el[i]))
            if dist[i] >= min_separation:
                break
        assert best is not None
        az_out.append(best[1])
        el_out.append(best[2])
    return np.array(az_out), np.array(el_out)


def random_viewpoints(
    k: int, rng: np.random.Generator, max_elevation: float, min_separation: float
) -> Directions:
    """K random viewpoints, uniform on the sphere within the elevation band, pairwise separated."""
    return _select((np.empty(0), np.empty(0)), k, rng, max_elevation, min_separation)


@functools.lru_cache(maxsize=8)
def _srp_grid(max_elevation: float, resolution: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid directions within the band and, per point, which points are its neighbours (one step away)."""
    n_az = max(round(2 * math.pi / resolution), 4)
    n_el = round(2 * max_elevation / resolution) + 1
    az, el = np.meshgrid(
        np.linspace(-math.pi, math.pi, n_az, endpoint=False),
        np.linspace(-max_elevation, max_elevation, n_el) if n_el > 1 else np.zeros(1),
    )
    az, el = az.ravel(), el.ravel()
    near = angular_distance(az[:, None], el[:, None], az[None], el[None]) <= 1.5 * resolution
    return az, el, near


def sound_peaks(
    foa: np.ndarray | torch.Tensor,
    max_elevation: float,
    resolution: float = math.radians(5.0),
    pattern: float | str = "max_re",
    threshold_db: float = 6.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of the steered-response power of FOA ``[4, N]``, strongest first.

    A first-order beam (pattern as in :func:`dataloading.foa.virtual_microphone`) is steered over a grid
    (``resolution`` radians) within the elevation band; its power is w·C·w for the channel covariance C.
    Returns (azimuth, elevation, power) of the peaks within ``threshold_db`` of the strongest.
    """
    x = foa.detach().cpu().double().numpy() if isinstance(foa, torch.Tensor) else np.asarray(foa, np.float64)
    cov = x @ x.T / max(x.shape[-1], 1)
    az, el, near = _srp_grid(float(max_elevation), float(resolution))
    weights = beam_weights(torch.from_numpy(az), torch.from_numpy(el), pattern).numpy()  # [grid, 4]
    power = np.einsum("gi,ij,gj->g", weights, cov, weights)
    is_peak = (power[:, None] >= np.where(near, power[None], -np.inf)).all(1)
    is_peak &= power >= power.max() * 10.0 ** (-threshold_db / 10.0)
    order = np.flatnonzero(is_peak)[np.argsort(-power[is_peak], kind="stable")]
    return az[order], el[order], power[order]


def audio_viewpoints(
    foa: np.ndarray | torch.Tensor,
    k: int,
    rng: np.random.Generator,
    max_elevation: float,
    min_separation: float,
) -> Directions:
    """Viewpoints toward the strongest sound peaks (:func:`sound_peaks`), filled up with random ones."""
    az, el, _ = sound_peaks(foa, max_elevation)
    return _select((az, el), k, rng, max_elevation, min_separation)


def _shuffled(objects: np.ndarray | None, rng: np.random.Generator) -> Directions:
    """Object directions ``[M, 2]`` (azimuth, elevation) as two arrays in a random order."""
    objects = np.zeros((0, 2)) if objects is None else np.asarray(objects, np.float64).reshape(-1, 2)
    order = rng.permutation(len(objects))
    return objects[order, 0], objects[order, 1]


def listed_viewpoints(
    listed: np.ndarray | None, k: int, rng: np.random.Generator, max_elevation: float, min_separation: float
) -> Directions:
    """Viewpoints toward directions ``[M, 2]`` (azimuth, elevation; radians) from clip metadata: the
    detected objects (``objects`` sampler) or the labelled sound events, one per source (``labels``).

    They are taken in a random order, so clips with more than K of them vary between epochs; missing
    ones are filled with random viewpoints.
    """
    return _select(_shuffled(listed, rng), k, rng, max_elevation, min_separation)


def mix_viewpoints(
    cues: Cues, k: int, rng: np.random.Generator, max_elevation: float, min_separation: float
) -> Directions:
    """Labelled sound events first where the clip has them (the truth of where sound comes from), then
    objects, each in random order, then sound peaks, then random viewpoints to make up K."""
    az, el = _shuffled(cues.objects, rng)
    if cues.labels is not None and len(cues.labels):  # unlabelled clips draw what they drew before labels
        label_az, label_el = _shuffled(cues.labels, rng)
        az, el = np.concatenate((label_az, az)), np.concatenate((label_el, el))
    if cues.foa is not None:
        peak_az, peak_el, _ = sound_peaks(cues.foa, max_elevation)
        az, el = np.concatenate((az, peak_az)), np.concatenate((el, peak_el))
    return _select((az, el), k, rng, max_elevation, min_separation)


def sample_viewpoints(
    sampler: ViewpointSampler,
    cues: Cues,
    k: int,
    rng: np.random.Generator,
    max_elevation: float,
    min_separation: float,
) -> Directions:
    """Dispatch on the configured sampler name (``DataConfig.viewpoint_sampler``); angles in radians."""
    if sampler == "random":
        return random_viewpoints(k, rng, max_elevation, min_separation)
    if sampler == "objects":
        return listed_viewpoints(cues.objects, k, rng, max_elevation, min_separation)
    if sampler == "labels":
        return listed_viewpoints(cues.labels, k, rng, max_elevation, min_separation)
    if sampler == "audio":
        if cues.foa is None:
            raise ValueError("the audio sampler needs the clip's FOA")
        return audio_viewpoints(cues.foa, k, rng, max_elevation, min_separation)
    if sampler == "mix":
        return mix_viewpoints(cues, k, rng, max_elevation, min_separation)
    raise ValueError(f"unknown viewpoint sampler {sampler!r}")
