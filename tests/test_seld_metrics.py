"""The DCASE 2023 SELD metrics on hand-built scenes whose counts are worked out by hand below."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.dcase import CLASSES, Event
from evaluation.seld_metrics import SeldCounts, counts_of, score_files

C = len(CLASSES)  # 13 classes enter every macro mean
SPEECH, CLAPPING = CLASSES.index("female speech"), CLASSES.index("clapping")


def held(class_index: int, azimuth_deg: float, frames: range, source: int = 0) -> list[Event]:
    """One source of a class held at a fixed azimuth (elevation 0) over ``frames``."""
    return [Event(f, class_index, source, math.radians(azimuth_deg), 0.0) for f in frames]


SECOND = range(10)  # one 1 s segment


def test_perfect_on_every_class_scores_zero_seld() -> None:
    reference = [e for c in range(C) for e in held(c, 10.0 * c, SECOND)]
    scores = score_files([(reference, reference, 10)])
    assert scores.er == 0.0
    assert scores.f == pytest.approx(1.0) and scores.lr == pytest.approx(1.0)
    assert scores.le == pytest.approx(0.0, abs=1e-9) and scores.seld == pytest.approx(0.0, abs=1e-9)


def test_perfect_on_one_class_still_pays_for_the_absent_ones() -> None:
    # The official eps denominators give a class that never occurs F = 0, LR = 0, LE = 180°, and
    # the macro mean keeps it: F = LR = 1/13, LE = 12·180/13, SELD = (0 + 12/13 + 12/13 + 12/13)/4.
    reference = held(SPEECH, 30.0, SECOND)
    scores = score_files([(reference, reference, 10)])
    assert scores.per_class["female speech"] == pytest.approx({"f": 1.0, "le": 0.0, "lr": 1.0, "seld": 0.0})
    assert scores.per_class["bell"] == pytest.approx({"f": 0.0, "le": 180.0, "lr": 0.0, "seld": 0.75})
    assert scores.er == 0.0
    assert scores.f == pytest.approx(1 / 13) and scores.lr == pytest.approx(1 / 13)
    assert scores.le == pytest.approx(12 * 180 / 13)
    assert scores.seld == pytest.approx(3 * (12 / 13) / 4)
    # averaged over the classes that occur (what the SELD task passes), the absent ones are left out
    only = counts_of(reference, reference, 10).scores(classes=[SPEECH])
    assert (only.er, only.f, only.le, only.lr, only.seld) == pytest.approx((0.0, 1.0, 0.0, 1.0, 0.0))
    assert only.per_class["bell"] == scores.per_class["bell"]


def test_wrong_class_is_a_substitution() -> None:
    # Segment 0: speech only in the reference (FN 1), clapping only in the prediction (FP 1):
    # S = min(1, 1) = 1, Nref = 1, ER = 1; both classes F 0, LR 0, LE 180; SELD (1 + 1 + 1 + 1)/4.
    counts = counts_of(held(SPEECH, 0.0, SECOND), held(CLAPPING, 0.0, SECOND), 10)
    assert (counts.substitutions, counts.deletions, counts.insertions) == (1, 0, 0)
    assert counts.fn[SPEECH] == 1 and counts.fp[CLAPPING] == 1
    scores = counts.scores()
    assert scores.er == pytest.approx(1.0)
    assert scores.f == 0.0 and scores.lr == 0.0 and scores.le == 180.0 and scores.seld == pytest.approx(1.0)


def test_right_class_25_degrees_off_is_localised_but_not_detected() -> None:
    # One matched track, mean error 25° > 20°: DE_TP 1 (LE 25, LR 1), but FP_spatial 1, so
    # F = 0 / (0 + 1 + 0) = 0 and the local FP makes an insertion: ER = 1/1.
    counts = counts_of(held(SPEECH, 0.0, SECOND), held(SPEECH, 25.0, SECOND), 10)
    assert counts.tp[SPEECH] == 0 and counts.fp_spatial[SPEECH] == 1 and counts.insertions == 1
    scores = counts.scores()
    assert scores.per_class["female speech"]["le"] == pytest.approx(25.0)
    assert scores.per_class["female speech"]["lr"] == pytest.approx(1.0)
    assert scores.per_class["female speech"]["f"] == 0.0
    assert scores.er == pytest.approx(1.0)


def test_threshold_applies_to_the_segment_mean_error() -> None:
    # 5 frames 30° off and 5 frames exact: the track's mean is 15° ≤ 20°, a true positive.
    predicted = held(SPEECH, 30.0, range(5)) + held(SPEECH, 0.0, range(5, 10))
    scores = score_files([(held(SPEECH, 0.0, SECOND), predicted, 10)])
    assert scores.per_class["female speech"] == pytest.approx(
        {"f": 1.0, "le": 15.0, "lr": 1.0, "seld": (0 + 0 + 15 / 180 + 0) / 4}
    )


def test_missed_event_is_a_deletion() -> None:
    # Speech in both seconds, predicted (perfectly) only in the first: TP 1, FN 1, Nref 2.
    # ER = D/Nref = 1/2; F = 1/(1 + 0 + 0.5·1) = 2/3; LE 0; LR = 1/(1 + 1) = 1/2.
    counts = counts_of(held(SPEECH, 0.0, range(20)), held(SPEECH, 0.0, SECOND), 20)
    assert (counts.substitutions, counts.deletions, counts.insertions) == (0, 1, 0)
    scores = counts.scores()
    assert scores.er == pytest.approx(0.5)
    assert scores.per_class["female speech"] == pytest.approx(
        {"f": 2 / 3, "le": 0.0, "lr": 0.5, "seld": (0.5 + 1 / 3 + 0 + 0.5) / 4}
    )


def test_false_alarm_is_an_insertion() -> None:
    # Speech perfect; clapping predicted where there is none: FP 1, I 1, Nref 1, ER 1. Per-class
    # SELD carries the global ER: speech (1 + 0 + 0 + 0)/4, clapping (1 + 1 + 180/180 + 1)/4.
    predicted = held(SPEECH, 0.0, SECOND) + held(CLAPPING, 90.0, SECOND)
    scores = score_files([(held(SPEECH, 0.0, SECOND), predicted, 10)])
    assert scores.er == pytest.approx(1.0)
    assert scores.per_class["female speech"] == pytest.approx({"f": 1.0, "le": 0.0, "lr": 1.0, "seld": 0.25})
    assert scores.per_class["clapping"] == pytest.approx({"f": 0.0, "le": 180.0, "lr": 0.0, "seld": 1.0})


def test_overlapping_same_class_sources_are_matched_by_hungarian_even_when_tracks_swap() -> None:
    # Reference: source 0 at 0°, source 1 at 90°. Prediction: track 0 at 85°, track 1 at 5°, so
    # pairing in track order would be 85° off; the assignment pairs 0°↔5° and 90°↔85°: two TPs,
    # total DE 5 + 5, LE 10/2 = 5, F 1, LR 1, Nref 2, ER 0.
    reference = held(SPEECH, 0.0, SECOND, source=0) + held(SPEECH, 90.0, SECOND, source=1)
    predicted = held(SPEECH, 85.0, SECOND, source=0) + held(SPEECH, 5.0, SECOND, source=1)
    counts = counts_of(reference, predicted, 10)
    assert counts.tp[SPEECH] == 2 and counts.nref[SPEECH] == 2
    assert counts.total_de[SPEECH] == pytest.approx(10.0)
    scores = counts.scores()
    assert scores.er == 0.0
    assert scores.per_class["female speech"] == pytest.approx(
        {"f": 1.0, "le": 5.0, "lr": 1.0, "seld": (5 / 180) / 4}
    )


def test_an_extra_predicted_track_is_a_false_positive() -> None:
    # One reference source, two predicted tracks of its class: the assignment takes the exact one
    # (TP 1) and the excess track is FP 1 and an insertion: ER 1, F = 1/(1 + 0.5) = 2/3.
    predicted = held(SPEECH, 0.0, SECOND, source=0) + held(SPEECH, 120.0, SECOND, source=1)
    scores = score_files([(held(SPEECH, 0.0, SECOND), predicted, 10)])
    assert scores.er == pytest.approx(1.0)
    assert scores.per_class["female speech"]["f"] == pytest.approx(2 / 3)
    assert scores.per_class["female speech"]["le"] == pytest.approx(0.0)


def test_class_in_both_but_no_common_frame_counts_the_predicted_tracks_as_misses() -> None:
    # Official quirk: the reference has 1 track in frames 0-4, the prediction 2 tracks in frames
    # 5-9 of the same second; no frame matches, so FN += nb_pred = 2 (not FN 1 + FP 2), D 2, ER 2/1.
    predicted = held(SPEECH, 0.0, range(5, 10), source=0) + held(SPEECH, 60.0, range(5, 10), source=1)
    counts = counts_of(held(SPEECH, 0.0, range(5)), predicted, 10)
    assert counts.fn[SPEECH] == 2 and counts.fp[SPEECH] == 0
    assert (counts.substitutions, counts.deletions, counts.insertions) == (0, 2, 0)
    assert counts.scores().er == pytest.approx(2.0)


def test_last_segment_is_a_whole_second() -> None:
    # 15 frames make ceil(15/10) = 2 segments covering frames 0-19: a missed event at frame 17
    # counts (Nref 1, D 1), one at frame 20 is outside every segment.
    counts = counts_of(held(SPEECH, 0.0, range(17, 18)) + held(CLAPPING, 0.0, range(20, 21)), [], 15)
    assert counts.nref.sum() == 1 and counts.deletions == 1


def test_files_pool_counts_before_scoring() -> None:
    # A perfect file and a missed-event file: pooled TP 1, FN 1, so F = 2/3 (not the mean of 1 and 0).
    perfect = (held(SPEECH, 0.0, SECOND), held(SPEECH, 0.0, SECOND), 10)
    missed = (held(SPEECH, 0.0, SECOND), [], 10)
    assert score_files([perfect, missed]).per_class["female speech"]["f"] == pytest.approx(2 / 3)
    pooled = SeldCounts.zero() + counts_of(*perfect) + counts_of(*missed)
    assert pooled.scores() == score_files([perfect, missed])


degrees = st.sampled_from([-150, -90, -45, 0, 10, 30, 90, 135, 180]).map(math.radians)
scene = st.lists(
    st.builds(
        Event,
        frame=st.integers(0, 24),
        class_index=st.integers(0, 2),
        source=st.integers(0, 2),
        azimuth=degrees,
        elevation=st.sampled_from([-45, 0, 20, 60]).map(math.radians),
    ),
    max_size=25,
    unique_by=lambda e: (e.frame, e.class_index, e.source),
)


def assert_same_counts(a: SeldCounts, b: SeldCounts) -> None:
    for name in ("tp", "fp_spatial", "fp", "fn", "nref"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_allclose(a.total_de, b.total_de, atol=1e-9)
    assert (a.substitutions, a.deletions, a.insertions) == (b.substitutions, b.deletions, b.insertions)


@settings(max_examples=40, deadline=None)
@given(scene, scene, st.randoms(use_true_random=False))
def test_counts_ignore_event_order_and_predicted_track_numbers(
    reference: list[Event], predicted: list[Event], rng: random.Random
) -> None:
    renumber = [0, 1, 2]
    rng.shuffle(renumber)
    shuffled_ref = rng.sample(reference, len(reference))
    renumbered = [
        Event(e.frame, e.class_index, renumber[e.source], e.azimuth, e.elevation) for e in predicted
    ]
    renumbered = rng.sample(renumbered, len(renumbered))
    assert_same_counts(counts_of(reference, predicted, 25), counts_of(shuffled_ref, renumbered, 25))
