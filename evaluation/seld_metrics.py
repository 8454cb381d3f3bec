"""The DCASE 2023 Task 3 SELD metrics, macro-averaged over the 13 STARSS23 classes.

Location-sensitive detection (error rate ER, F-score F within 20°) and class-sensitive localisation
(localisation error LE in degrees, localisation recall LR), with the semantics of the official
``SELD_evaluation_metrics.py`` and ``cls_feature_class.segment_labels`` of the DCASE 2023 baseline
(sharathadavanne/seld-dcase2023), re-implemented on :class:`dataloading.dcase.Event` lists.

Label frames are 100 ms (:data:`dataloading.dcase.FRAME_SECONDS`); they are grouped into
non-overlapping 1 s segments of 10 frames, and everything is counted per segment and class. Counts
are summed over segments and over files (:class:`SeldCounts` adds), and only the totals become
scores, as the official tool pools every file of a split; per-file counts are what a bootstrap over
recordings resamples.

Quirks of the official code kept here, so that our numbers are comparable with published ones:

* A reference "track" is the rank of an event among the same-class events of its frame, not its
  source index (the official code numbers the rows of each frame, with a TODO to use the source
  ids). Here the rank is by source index, which is the row order of a STARSS23 metadata file.
* When a class is in both reference and prediction within a segment but in no common frame, the
  official code adds the number of *predicted* tracks to the false negatives and counts no false
  positive.
* Classes that never occur still take part in the macro average: with the official ``eps``
  denominators they score F = 0, LR = 0 and LE = 180°, so a perfect system on a split lacking some
  classes does not reach F = 1. ER is one global ratio (S + D + I) / Nref over all classes.
  :meth:`SeldCounts.scores` can average over a given set of classes instead (``classes``): the SELD
  task passes the classes its test split holds, which on STARSS23 (every class occurs) is the same.

One deviation: ``frames`` is the true number of label frames of the file. The official evaluation
passes the *index* of the last labelled reference frame instead, which drops that frame when it falls
on a segment start; pass ``max(e.frame for e in reference)`` to reproduce that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from dataloading.dcase import CLASSES, FRAME_SECONDS, Event
from evaluation.metrics import DOA_THRESHOLD_DEG, angular_error

SEGMENT_FRAMES = round(1.0 / FRAME_SECONDS)  # label frames in one 1 s evaluation segment
# The official denominators add numpy's float64 eps; it decides what classes without any event score.
EPS = float(np.finfo(np.float64).eps)
NO_LOCALISATION_DEG = 180.0  # LE of a class without a single matched track


@dataclass(frozen=True)
class SeldScores:
    """SELD scores: ``er`` and ``f`` and ``lr`` are fractions in [0, 1] (ER can exceed 1), ``le`` is in
    degrees, ``seld`` = (ER + (1 − F) + LE/180 + (1 − LR)) / 4. F, LE and LR are means over the 13
    classes; ``per_class`` maps each class name to its ``f``, ``le`` (degrees), ``lr`` and ``seld``
    (the latter with the global ER)."""

    er: float
    f: float
    le: float
    lr: float
    seld: float
    per_class: dict[str, dict[str, float]]


@dataclass(frozen=True)
class SeldCounts:
    """Additive SELD counts; per-class arrays have one entry per class of :data:`CLASSES`.

    The unit counted is a track in a 1 s segment. ``tp``: matched tracks whose mean error is within
    20°; ``fp_spatial``: matched tracks beyond 20°; ``fp``: predicted tracks without a reference
    track; ``fn``: reference tracks without a prediction; ``total_de``: sum of the matched tracks'
    mean errors in degrees; ``nref``: reference tracks. ``substitutions``, ``deletions`` and
    ``insertions`` are summed over segments, over all classes together.

    The official code also keeps DE_FP and DE_FN, and DE_TP; they are incremented exactly where FP
    and FN are, and DE_TP where TP or FP_spatial is, so they are not stored twice here.
    """

    tp: np.ndarray
    fp_spatial: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    total_de: np.ndarray
    nref: np.ndarray
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @classmethod
    def zero(cls) -> SeldCounts:
        """Counts of no file at all."""
        counts = [np.zeros(len(CLASSES), dtype=np.int64) for _ in range(5)]  # one array per field
        tp, fp_spatial, fp, fn, nref = counts
        return cls(tp, fp_spatial, fp, fn, np.zeros(len(CLASSES)), nref)

    def __add__(self, other: SeldCounts) -> SeldCounts:
        return SeldCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, weight: float) -> SeldCounts:
        """Every count times ``weight``: a file drawn that many times by a bootstrap replicate."""
        return SeldCounts(*(weight * getattr(self, f.name) for f in fields(self)))

    def scores(self, classes: Sequence[int] | None = None) -> SeldScores:
        """The scores of these counts (LE in degrees), F, LE and LR macro-averaged over ``classes``
        (indices into :data:`CLASSES`; default all of them, as the official tool). ``per_class`` has
        every class either way."""
        de_tp = self.tp + self.fp_spatial  # every matched track is localised, however far off
        er = (self.substitutions + self.deletions + self.insertions) / (self.nref.sum() + EPS)
        f = self.tp / (EPS + self.tp + self.fp_spatial + 0.5 * (self.fp + self.fn))
        le = np.where(de_tp > 0, self.total_de / (de_tp + EPS), NO_LOCALISATION_DEG)
        lr = de_tp / (EPS + de_tp + self.fn)
        seld = (er + (1.0 - f) + le / 180.0 + (1.0 - lr)) / 4.0
        per_class = {
            name: {"f": float(f[c]), "le": float(le[c]), "lr": float(lr[c]), "seld": float(seld[c])}
            for c, name in enumerate(CLASSES)
        }
        chosen = list(range(len(CLASSES))) if classes is None else list(classes)
        means = (float(x[chosen].mean()) for x in (f, le, lr, seld))
        return SeldScores(float(er), *means, per_class=per_class)


_Tracks = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tracks(events: Iterable[Event], limit: int, reference: bool) -> _Tracks:
    """The events of frames ``0..limit-1`` as padded arrays: azimuth and elevation in radians
    ``[limit, classes, K]`` in rank order within each frame and class, and the event count
    ``[limit, classes]``.

    Reference events rank by source index (the official track identity, see the module notes).
    Predicted events rank by direction: their order only breaks ties in the assignment, and ranking
    by direction keeps the scores independent of the track numbering."""
    kept = [e for e in events if e.frame < limit]
    if any(e.frame < 0 for e in kept):
        raise ValueError("events must have non-negative frames")
    if reference:
        kept.sort(key=lambda e: (e.frame, e.class_index, e.source))
    else:
        kept.sort(key=lambda e: (e.frame, e.class_index, e.azimuth, e.elevation))
    count = np.zeros((limit, len(CLASSES)), dtype=np.int64)
    rank = np.empty(len(kept), dtype=np.int64)
    for i, e in enumerate(kept):
        rank[i] = count[e.frame, e.class_index]
        count[e.frame, e.class_index] += 1
    azimuth = np.zeros((limit, len(CLASSES), max(1, int(count.max(initial=0)))))
    elevation = np.zeros_like(azimuth)
    frame = np.array([e.frame for e in kept], dtype=np.int64)
    at = (frame, np.array([e.class_index for e in kept], dtype=np.int64), rank)
    azimuth[at] = [e.azimuth for e in kept]
    elevation[at] = [e.elevation for e in kept]
    return azimuth, elevation, count


def counts_of(reference: Sequence[Event], predicted: Sequence[Event], frames: int) -> SeldCounts:
    """The SELD counts of one file: reference and predicted events (angles in radians, ``source`` the
    reference source or the predicted track) over ``frames`` label frames of 100 ms.

    The file has ceil(frames / 10) segments of 1 s; like the official ``segment_labels``, the last
    segment is a whole second, so events up to its end count and later ones are ignored."""
    segments = math.ceil(frames / SEGMENT_FRAMES)
    limit = segments * SEGMENT_FRAMES
    ref_az, ref_el, ref_n = _tracks(reference, limit, reference=True)
    pred_az, pred_el, pred_n = _tracks(predicted, limit, reference=False)

    # Angular distance in degrees between every reference and predicted direction of a frame and class.
    cost = np.degrees(
        angular_error(
            torch.from_numpy(pred_az[..., None, :]),
            torch.from_numpy(pred_el[..., None, :]),
            torch.from_numpy(ref_az[..., :, None]),
            torch.from_numpy(ref_el[..., :, None]),
        ).numpy()
    )  # [limit, classes, K_ref, K_pred]

    # Per frame, match the directions by the Hungarian algorithm, and collect each reference
    # track's matched distances over the frames of its segment.
    distance_sum = np.zeros((segments, len(CLASSES), ref_az.shape[-1]))
    matches = np.zeros(distance_sum.shape, dtype=np.int64)
    for frame, c in np.argwhere((ref_n > 0) & (pred_n > 0)):
        pair = cost[frame, c, : ref_n[frame, c], : pred_n[frame, c]]
        rows, cols = linear_sum_assignment(pair)
        distance_sum[frame // SEGMENT_FRAMES, c, rows] += pair[rows, cols]
        matches[frame // SEGMENT_FRAMES, c, rows] += 1

    # Tracks per segment and class: the most events of the class in any one frame of the segment.
    nb_ref = ref_n.reshape(segments, SEGMENT_FRAMES, len(CLASSES)).max(1)
    nb_pred = pred_n.reshape(segments, SEGMENT_FRAMES, len(CLASSES)).max(1)
    has_ref, has_pred = nb_ref > 0, nb_pred > 0

    matched = matches > 0  # [segments, classes, K_ref]
    mean_distance = np.divide(distance_sum, matches, out=np.zeros_like(distance_sum), where=matched)
    close = matched & (mean_distance <= DOA_THRESHOLD_DEG)
    far = matched & ~close
    aligned = matched.any(-1)  # the class shares at least one frame with the prediction
    # Official quirk: a class in both but in no common frame adds the *predicted* track count to FN.
    unaligned = has_ref & has_pred & ~aligned
    fp = np.where(aligned, np.maximum(nb_pred - nb_ref, 0), 0) + np.where(has_pred & ~has_ref, nb_pred, 0)
    fn = (
        np.where(aligned, np.maximum(nb_ref - nb_pred, 0), 0)
        + np.where(has_ref & ~has_pred, nb_ref, 0)
        + np.where(unaligned, nb_pred, 0)
    )
    # The error-rate terms pool all classes of a segment: a false positive and a false negative in
    # the same second make one substitution.
    local_fp = (fp + far.sum(-1)).sum(-1)
    local_fn = fn.sum(-1)
    return SeldCounts(
        tp=close.sum((0, 2)),
        fp_spatial=far.sum((0, 2)),
        fp=fp.sum(0),
        fn=fn.sum(0),
        total_de=mean_distance.sum((0, 2)),
        nref=nb_ref.sum(0),
        substitutions=int(np.minimum(local_fp, local_fn).sum()),
        deletions=int(np.maximum(local_fn - local_fp, 0).sum()),
        insertions=int(np.maximum(local_fp - local_fn, 0).sum()),
    )


def score_files(files: Iterable[tuple[Sequence[Event], Sequence[Event], int]]) -> SeldScores:
    """Scores of many files pooled like the official tool: each item is (reference events, predicted
    events, label frames of 100 ms), angles in radians; counts are summed over files, then scored."""
    total = SeldCounts.zero()
    for reference, predicted, frames in files:
        total = total + counts_of(reference, predicted, frames)
    return total.scores()
