"""FOA (AmbiX: ACN W,Y,Z,X; SN3D) for a scene: image-source rooms plus a diffuse tail and noise.

Each source is rendered through room impulse responses from pyroomacoustics' image-source
method, with four coincident microphones whose directivities are the real spherical harmonics
of order 0 and 1. Those are orthonormal (N3D/√(4π)); scaling by √(4π) and dividing channels
1–3 by √3 gives SN3D, where a plane wave from (φ, ν) has gains (1, sinφcosν, sinν, cosφcosν).
Moving sources are rendered in blocks with a response per block, cross-faded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.directivities import RealSphericalHarmonicsDirectivity
from scipy.signal import fftconvolve, lfilter

from dataloading import seeds
from dataloading.seeds import stable_seed
from dataloading.synth.assets import AssetError, SoundAsset
from dataloading.synth.scene import Room, Scene, Source, unit_vector

SPEED_OF_SOUND = 343.0  # m/s
MAX_ISM_ORDER = 10  # higher orders cost ~order³; the diffuse tail stands in for them
BLOCK_SECONDS = 1.0  # hop between responses of a moving source; its motion is a few °/s
# ACN index -> (m, n) of the real spherical harmonic: W=(0,0), Y=(-1,1), Z=(0,1), X=(1,1)
ACN_HARMONICS = ((0, 0), (-1, 1), (0, 1), (1, 1))
N3D_TO_SN3D = np.array([1.0, 1 / np.sqrt(3), 1 / np.sqrt(3), 1 / np.sqrt(3)])[:, None]


def room_impulse_response(room: Room, position: np.ndarray, rate: int) -> np.ndarray:
    """Early FOA response [4, L] (SN3D) from a point source at ``position`` (m) to the mic,
    scaled so that the direct path has amplitude 1/distance (a 0 dB source at 1 m)."""
    absorption, order = pra.inverse_sabine(room.rt60, room.dims)
    shoebox = pra.ShoeBox(
        list(room.dims), fs=rate, materials=pra.Material(absorption), max_order=min(order, MAX_ISM_ORDER)
    )
    mic = np.array(room.mic, dtype=float)[:, None]
    directivities = [RealSphericalHarmonicsDirectivity(m, n) for m, n in ACN_HARMONICS]
    shoebox.add_microphone_array(
        pra.MicrophoneArray(np.repeat(mic, 4, axis=1), rate, directivity=directivities)
    )
    shoebox.add_source(list(position))
    shoebox.compute_rir()
    length = max(len(shoebox.rir[c][0]) for c in range(4))
    rir = np.zeros((4, length))
    for c in range(4):
        rir[c, : len(shoebox.rir[c][0])] = shoebox.rir[c][0]
    # with directivities pra spreads as 1/r times the orthonormal harmonic (Y00 = 1/√(4π)):
    # scaling by √(4π) gives W = 1/r (unit gain at 1 m), then SN3D
    return rir * np.sqrt(4 * np.pi) * N3D_TO_SN3D


def diffuse_tail(room: Room, distance: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Late reverberation [4, L]: exponentially decaying noise, isotropic (X,Y,Z at 1/√3 of W in
    SN3D), from where the truncated image-source model runs out, with the energy Sabine's theory
    gives: with the direct path at 1/r, the whole reverberant part holds 1/r_c² = 16π/R."""
    alpha, order = pra.inverse_sabine(room.rt60, room.dims)  # Sabine's mean energy absorption
    if order <= MAX_ISM_ORDER:
        return np.zeros((4, 1))  # the image-source model is complete
    dims = np.array(room.dims)
    surface = 2 * (dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2])
    reverberant_energy = 16 * np.pi * (1 - alpha) / (surface * alpha)
    direct = distance / SPEED_OF_SOUND
    start = direct + MAX_ISM_ORDER * dims.min() / SPEED_OF_SOUND  # image sources cover up to here
    decay = 13.8 / room.rt60  # energy decay rate, 1/s: 60 dB over rt60
    t = np.arange(int((start + room.rt60) * rate)) / rate
    tail_energy = reverberant_energy * np.exp(-decay * (start - direct))
    amplitude = np.sqrt(tail_energy * decay / rate)  # so that the samples' squares sum to tail_energy
    onset = np.clip((t - start) / 0.02, 0, 1)  # 20 ms fade-in hides the seam with the early part
    envelope = amplitude * onset * np.exp(-decay * np.maximum(t - start, 0) / 2)
    return rng.standard_normal((4, t.size)) * envelope * N3D_TO_SN3D


def render_source(source: Source, dry: np.ndarray, room: Room, rate: int, seed: int) -> np.ndarray:
    """FOA [4, N] of one source: ``dry`` (mono, N samples) through per-block room responses
    along the source's trajectory, blocks cross-faded with triangular weights that sum to 1."""
    n = dry.size
    hop = int(BLOCK_SECONDS * rate)
    tail = diffuse_tail(room, source.distance, rate, np.random.default_rng(seed))
    out = np.zeros((4, n + hop * 2 + 1))
    ramp = 1 - np.abs(np.arange(-hop, hop + 1)) / hop
    cache: dict[tuple, np.ndarray] = {}
    for k in range(n // hop + 2):
        lo, hi = max(0, (k - 1) * hop), min(n, (k + 1) * hop + 1)
        if lo >= hi:
            break
        block = dry[lo:hi] * ramp[lo - (k - 1) * hop : hi - (k - 1) * hop]
        if not block.any():
            continue  # silent here: no response needed
        az, el = source.direction(k * hop / rate)
        position = np.array(room.mic) + source.distance * unit_vector(az, el)
        key = tuple(np.round(position, 2))  # static sources reuse one response
        if key not in cache:
            early = room_impulse_response(room, position, rate)
            length = max(early.shape[1], tail.shape[1])
            rir = np.zeros((4, length))
            rir[:, : early.shape[1]] += early
            rir[:, : tail.shape[1]] += tail
            cache = {key: rir}
        wet = fftconvolve(block[None, :], cache[key], axes=1)
        end = min(out.shape[1], lo + wet.shape[1])
        out[:, lo:end] += wet[:, : end - lo]
    return out[:, :n] * 10 ** (source.gain_db / 20)


def diffuse_noise(n: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Isotropic pink-ish background noise [4, N samples] (SN3D: X,Y,Z at 1/√3 of W), RMS ``level_db``
    (dB re full scale)."""
    white = rng.standard_normal((4, n))
    # Paul Kellet's economy pink filter, as a 3-pole IIR: -3 dB/octave across the audio band
    b, a = (
        [0.049922035, -0.095993537, 0.050612699, -0.004408786],
        [1, -2.494956002, 2.017265875, -0.522189400],
    )
    pink = lfilter(b, a, white, axis=1)
    pink /= pink[0].std() + 1e-12
    return pink * N3D_TO_SN3D * 10 ** (level_db / 20)


def dry_signal(source: Source, wave: np.ndarray, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The source's mono signal [N]: during each (on, off) event the recording plays, repeated
    with short random gaps if it is shorter than the event, with 10 ms fades at the edges."""
    out = np.zeros(n, np.float32)
    fade = int(0.01 * rate)
    for on, off in source.events:
        start, stop = int(on * rate), min(n, int(off * rate))
        pos = start
        while pos < stop:
            piece = wave[: stop - pos]
            out[pos : pos + piece.size] += piece
            pos += piece.size + int(rng.uniform(0.05, 0.4) * rate)
        ramp = np.minimum(
            1, np.minimum(np.arange(stop - start) + 1, np.arange(stop - start)[::-1] + 1) / fade
        )
        out[start:stop] *= ramp
    return out


def render_scene_audio(
    scene: Scene, rate: int, load: Callable[[SoundAsset], np.ndarray]
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """FOA [4, N] float32 of the whole scene, peak-normalised to 0.9, and the assets skipped.

    ``load(asset)`` returns the mono recording at ``rate``; one that raises
    :class:`~dataloading.synth.assets.AssetError` is reported and its sound dropped: a visible
    source becomes a silent object, an off-screen one is removed, so the ground truth says
    what was rendered.
    """
    n = round(scene.seconds * rate)
    rng = np.random.default_rng(stable_seed(seeds.SCENE_AUDIO, scene.seed))
    mix = diffuse_noise(n, scene.noise_db, rng)
    skipped = []
    for source in list(scene.sources):
        if source.sound is None or not source.events:
            continue
        try:
            wave = load(source.sound)
        except AssetError as exc:
            skipped.append({"path": source.sound.path, "reason": str(exc)})
            if source.visible:
                source.sound, source.events, source.kind = None, [], "silent"
            else:
                scene.sources.remove(source)
            continue
        dry = dry_signal(source, wave, n, rate, rng)
        mix += render_source(
            source, dry, scene.room, rate, stable_seed(seeds.REVERB_TAIL, scene.seed, source.id)
        )
    peak = np.abs(mix).max()
    return (mix * (0.9 / peak if peak > 0 else 1.0)).astype(np.float32), skipped
