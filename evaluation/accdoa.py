"""Multi-ACCDOA, the output format of the DCASE 2022/2023 SELD baseline: targets, loss and decoding.

An output frame holds, per track and class, an activity-coupled direction vector: its norm is the
activity (active above 0.5) and its direction the DOA, with x = front, y = left, z = up (so azimuth
counter-clockwise from the front, elevation up, as :mod:`dataloading.dcase`). Our one layout is
``[..., frames, TRACKS, 3 (x, y, z), classes]``; it is the baseline's flat
``[..., frames, 3 · 3 · 13]`` output reshaped, which orders track, then axis, then class.

Several sources of one class in a frame are trained with ADPIT (auxiliary duplicating permutation
invariant training, Shimada et al. 2022): the target holds one source as "A0", two as "B0, B1",
three as "C0, C1, C2" (:func:`targets`), and the loss takes, per frame and class, the best of the 13
ways to lay them on the 3 tracks, a lone or pair source duplicated (:func:`adpit_loss`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dataloading.dcase import CLASSES, Event
from dataloading.foa import direction_vector
from evaluation.metrics import angular_error, vector_to_angles

TRACKS = 3
ACTIVITY_THRESHOLD = 0.5  # a track is active where its vector is longer than this
UNIFY_DEG = 15.0  # the baseline's thresh_unify: same-class tracks closer than this are one source

# ADPIT target slots per frame and class: A0 (a lone source), B0 B1 (two), C0 C1 C2 (three).
SLOTS = 6
_SLOTS_OF = {1: (0,), 2: (1, 2), 3: (3, 4, 5)}
# The track layouts the loss tries: the lone source on all three tracks, the 6 ways to put a pair
# on three tracks using both, and the 6 orders of a triple. The first of each kind is the one the
# other kinds are padded with (see adpit_loss).
_LAYOUTS = {
    "A": [(0, 0, 0)],
    "B": [(1, 1, 2), (1, 2, 1), (1, 2, 2), (2, 1, 1), (2, 1, 2), (2, 2, 1)],
    "C": list(itertools.permutations((3, 4, 5))),
}


def targets(events: Sequence[Event], frames: int) -> np.ndarray:
    """The ADPIT target of one file, ``[frames, 6 slots, 4 (activity, x, y, z), classes]`` float32, from
    events with angles in radians over ``frames`` label frames of 100 ms (later events are dropped).

    As the baseline's ``get_adpit_labels_for_file``: per frame and class, a lone source fills slot A0,
    two fill B0 and B1, three or more fill C0, C1, C2 with the first three (by source index here; the
    baseline keeps file order, which is source order in STARSS23 metadata). Directions are unit
    vectors."""
    groups: dict[tuple[int, int], list[Event]] = {}
    for e in sorted(events, key=lambda e: e.source):
        if 0 <= e.frame < frames:
            groups.setdefault((e.frame, e.class_index), []).append(e)
    placed = [
        (frame, slot, c, e)
        for (frame, c), group in groups.items()
        for slot, e in zip(_SLOTS_OF[min(len(group), 3)], group, strict=False)
    ]
    out = np.zeros((frames, SLOTS, 4, len(CLASSES)), dtype=np.float32)
    if placed:
        frame, slot, c, chosen = (list(column) for column in zip(*placed, strict=True))
        azimuth = torch.tensor([e.azimuth for e in chosen], dtype=torch.float64)
        elevation = torch.tensor([e.elevation for e in chosen], dtype=torch.float64)
        out[frame, slot, 0, c] = 1.0
        out[frame, slot, 1:, c] = direction_vector(azimuth, elevation).numpy()
    return out


def _as_layout(pred: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``pred`` in our ``[..., TRACKS, 3, classes]`` layout, reshaping a flat baseline output."""
    flat = TRACKS * 3 * len(CLASSES)
    return pred.reshape(*pred.shape[:-1], TRACKS, 3, len(CLASSES)) if pred.shape[-1] == flat else pred


def adpit_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The ADPIT mean squared error of multi-ACCDOA outputs, as the baseline's ``MSELoss_ADPIT``.

    ``pred``: ``[..., frames, TRACKS, 3, classes]`` (or the flat ``[..., frames, 117]``); ``target``:
    ``[..., frames, 6, 4, classes]`` from :func:`targets`. Per frame and class the squared error is
    averaged over tracks and axes for each of the 13 layouts, the smallest is kept, and those are
    averaged over everything; a scalar (unitless: vectors are activity × unit direction)."""
    pred = _as_layout(pred)
    slots = target[..., 0:1, :] * target[..., 1:, :]  # activity-masked directions, [..., 6, 3, C]
    first = {kind: slots[..., list(layouts[0]), :, :] for kind, layouts in _LAYOUTS.items()}
    candidates = []
    for kind, layouts in _LAYOUTS.items():
        # Each candidate adds the other kinds' first layout, as the baseline does: a frame and class
        # holds one kind only, so this is zero where that kind is in use and, where another is, it
        # keeps the candidate from targeting "silent" there (which would reward missing sources).
        pad = sum(first[other] for other in _LAYOUTS if other != kind)
        candidates += [slots[..., list(layout), :, :] + pad for layout in layouts]
    errors = torch.stack([((pred - c) ** 2).mean(dim=(-3, -2)) for c in candidates])  # [13, ..., C]
    return errors.min(dim=0).values.mean()


def decode(
    pred: np.ndarray, threshold: float = ACTIVITY_THRESHOLD, unify_deg: float = UNIFY_DEG
) -> list[Event]:
    """Events of one file's multi-ACCDOA output ``[frames, TRACKS, 3, classes]`` (or flat
    ``[frames, 117]``), as the baseline's test-time decoding.

    A track is active where its vector's norm exceeds ``threshold``; its direction (radians) is that
    of the vector. Two active tracks of a class whose directions are less than ``unify_deg`` degrees
    apart are one source. The baseline checks the pairs (0, 1), (1, 2), (2, 0): with no similar pair
    every active track is an event; with one, that pair becomes one event at the mean of its two
    vectors and the third track stays an event if active; with two or three, all three tracks become
    one event at their mean (even if the outer two are farther apart than ``unify_deg``). ``source``
    is the track, the lowest of a merged group; ``frame`` is the row (100 ms label frames)."""
    tracks = np.moveaxis(np.asarray(_as_layout(pred), dtype=np.float64), -1, 1)  # [frames, C, TRACKS, 3]
    active = np.linalg.norm(tracks, axis=-1) > threshold
    i, j = np.array([0, 1, 2]), np.array([1, 2, 0])
    azimuth, elevation = vector_to_angles(torch.from_numpy(tracks))
    apart = np.degrees(
        angular_error(azimuth[..., i], elevation[..., i], azimuth[..., j], elevation[..., j]).numpy()
    )
    similar = active[..., i] & active[..., j] & (apart < unify_deg)  # [frames, C, 3 pairs]

    found: list[tuple[int, int, int, np.ndarray]] = []  # frame, class, track, vector
    for frame, c in np.argwhere(active.any(-1)):
        here, pairs = tracks[frame, c], similar[frame, c]
        if pairs.sum() >= 2:
            found.append((frame, c, 0, here.mean(0)))
        elif pairs.sum() == 1:
            pair = int(np.argmax(pairs))
            lone = 3 - i[pair] - j[pair]
            found.append((frame, c, min(i[pair], j[pair]), (here[i[pair]] + here[j[pair]]) / 2))
            if active[frame, c, lone]:
                found.append((frame, c, lone, here[lone]))
        else:
            found += [(frame, c, track, here[track]) for track in np.flatnonzero(active[frame, c])]
    if not found:
        return []
    az, el = vector_to_angles(torch.from_numpy(np.stack([vector for *_, vector in found])))
    return [
        Event(int(frame), int(c), int(track), float(a), float(e))
        for (frame, c, track, _), a, e in zip(found, az, el, strict=True)
    ]
