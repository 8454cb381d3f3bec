"""Multi-ACCDOA: ADPIT targets, the ADPIT loss and the baseline's decoding, in our direction convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.dcase import CLASSES, Event
from evaluation.accdoa import TRACKS, adpit_loss, decode, targets
from evaluation.metrics import angular_error

C = len(CLASSES)
SPEECH, MUSIC = CLASSES.index("female speech"), CLASSES.index("music")
A0, B0, B1, C0, C1, C2 = range(6)
LEFT, UP = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def output_from(target: np.ndarray, layouts: dict[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """The multi-ACCDOA output ``[frames, 3, 3, C]`` a perfect network gives for an ADPIT target: the
    lone source on all tracks, a pair as (B0, B0, B1), a triple as (C0, C1, C2). A frame and class
    holds one kind only, so the three layouts simply add. ``layouts`` (class -> slots for the 3
    tracks) replaces that for a class, in every frame."""
    slots = target[:, :, :1] * target[:, :, 1:]  # [frames, 6, 3, C]
    out = slots[:, [A0, A0, A0]] + slots[:, [B0, B0, B1]] + slots[:, [C0, C1, C2]]
    for c, chosen in (layouts or {}).items():
        out[..., c] = slots[..., c][:, list(chosen)]
    return out


def test_targets_fill_slots_by_overlap_count_in_source_order() -> None:
    events = [
        Event(0, SPEECH, 0, math.pi / 2, 0.0),  # alone: A0, azimuth 90° = left
        Event(1, MUSIC, 5, 0.0, math.pi / 2),  # two music sources, given out of source order:
        Event(1, MUSIC, 2, math.pi / 2, 0.0),  # source 2 → B0, source 5 → B1
        *(Event(2, SPEECH, s, 0.0, 0.0) for s in (3, 1, 0, 2)),  # four: sources 0, 1, 2 → C0..C2
    ]
    t = targets(events, 3)
    assert t.shape == (3, 6, 4, C) and t.dtype == np.float32
    assert t[0, A0, :, SPEECH] == pytest.approx([1.0, *LEFT], abs=1e-7)
    assert t[1, B0, :, MUSIC] == pytest.approx([1.0, *LEFT], abs=1e-7)
    assert t[1, B1, :, MUSIC] == pytest.approx([1.0, *UP], abs=1e-7)
    assert t[2, C0:, 0, SPEECH].tolist() == [1.0, 1.0, 1.0] and t[2, :C0, 0, SPEECH].sum() == 0
    assert t[:, :, 0].sum() == 1 + 2 + 3  # nothing else is active; source 3 is dropped


def test_loss_of_silence_against_one_source() -> None:
    # Every one of the 13 candidates is the source on all 3 tracks (B and C are zero, the A padding
    # fills them), so each error is 3 tracks × 1² (x = 1) / 9 entries = 1/3 for that class and 0 for
    # the 12 others: the mean over 13 classes is 1/39.
    t = torch.from_numpy(targets([Event(0, SPEECH, 0, 0.0, 0.0)], 1))
    assert adpit_loss(torch.zeros(1, TRACKS, 3, C), t).item() == pytest.approx(1 / 39)


def test_flat_output_is_track_then_axis_then_class() -> None:
    # The baseline's flat column of track 1, axis y, class music is 1·39 + 1·13 + 8.
    flat = np.zeros((1, TRACKS * 3 * C), dtype=np.float32)
    flat[0, 1 * 39 + 1 * 13 + MUSIC] = 1.0
    (event,) = decode(flat)
    assert (event.class_index, event.source) == (MUSIC, 1)
    assert event.azimuth == pytest.approx(math.pi / 2) and event.elevation == pytest.approx(0.0)
    assert decode(flat.reshape(1, TRACKS, 3, C)) == [event]


def test_decode_reads_directions_in_our_convention() -> None:
    out = np.zeros((2, TRACKS, 3, C), dtype=np.float32)
    out[0, 0, :, SPEECH] = (0.0, 0.8, 0.0)  # left, norm 0.8 > 0.5: active
    out[1, 2, :, MUSIC] = (0.0, 0.0, 0.9)  # straight up
    out[1, 1, :, SPEECH] = (0.4, 0.0, 0.0)  # norm 0.4: inactive
    events = decode(out)
    assert [(e.frame, e.class_index, e.source) for e in events] == [(0, SPEECH, 0), (1, MUSIC, 2)]
    assert events[0].azimuth == pytest.approx(math.pi / 2)
    assert events[1].elevation == pytest.approx(math.pi / 2)


def unit(azimuth_deg: float) -> list[float]:
    return [math.cos(math.radians(azimuth_deg)), math.sin(math.radians(azimuth_deg)), 0.0]


def test_decode_merges_tracks_closer_than_the_unify_threshold() -> None:
    out = np.zeros((2, TRACKS, 3, C), dtype=np.float32)
    # Frame 0: tracks 0 and 1 are 10° apart (< 15°): one event at their mean, azimuth 5°; track 2
    # at 90° stays its own event.
    out[0, :, :, SPEECH] = [unit(0), unit(10), unit(90)]
    # Frame 1: 0°, 10°, 20°: pairs (0,1) and (1,2) are similar, (2,0) is 20° apart; two similar
    # pairs merge all three into one event at the mean, azimuth 10°.
    out[1, :, :, SPEECH] = [unit(0), unit(10), unit(20)]
    events = decode(out)
    assert [(e.frame, e.source) for e in events] == [(0, 0), (0, 2), (1, 0)]
    assert [math.degrees(e.azimuth) for e in events] == pytest.approx([5.0, 90.0, 10.0])


def test_decode_of_nothing_active_is_empty() -> None:
    assert decode(np.zeros((4, TRACKS, 3, C), dtype=np.float32)) == []


# Up to three same-class sources kept well apart (azimuths 120° apart ± 30°, elevation within ±30°:
# at least 51° between any two, far above the 15° unify threshold).
@st.composite
def sources(draw: st.DrawFn) -> list[Event]:
    events = []
    for frame in range(draw(st.integers(1, 4))):
        for c in draw(st.sets(st.integers(0, C - 1), max_size=3)):
            base = draw(st.floats(-math.pi, math.pi))
            for s in range(draw(st.integers(1, 3))):
                az = math.remainder(base + s * 2 * math.pi / 3 + draw(st.floats(-0.5, 0.5)), 2 * math.pi)
                events.append(Event(frame, c, s, az, draw(st.floats(-0.5, 0.5))))
    return events


def by_cell(events: list[Event]) -> dict[tuple[int, int], list[Event]]:
    cells: dict[tuple[int, int], list[Event]] = {}
    for e in events:
        cells.setdefault((e.frame, e.class_index), []).append(e)
    return cells


@settings(max_examples=40, deadline=None)
@given(sources())
def test_decode_of_a_perfect_output_recovers_the_sources(events: list[Event]) -> None:
    frames = 1 + max((e.frame for e in events), default=0)
    decoded = by_cell(decode(output_from(targets(events, frames))))
    truth = by_cell(events)
    assert decoded.keys() == truth.keys()
    for cell, expected in truth.items():
        got = decoded[cell]
        assert len(got) == len(expected)
        # Every true source has a decoded event within 1e-5 rad (float32 vectors), and vice versa.
        error = angular_error(
            torch.tensor([[e.azimuth for e in expected]]).T,
            torch.tensor([[e.elevation for e in expected]]).T,
            torch.tensor([[g.azimuth for g in got]]),
            torch.tensor([[g.elevation for g in got]]),
        )
        assert error.min(0).values.max() < 1e-5 and error.min(1).values.max() < 1e-5


PAIR_LAYOUTS = [(B0, B0, B1), (B0, B1, B0), (B0, B1, B1), (B1, B0, B0), (B1, B0, B1), (B1, B1, B0)]
TRIPLE_LAYOUTS = [(C0, C1, C2), (C0, C2, C1), (C1, C0, C2), (C1, C2, C0), (C2, C0, C1), (C2, C1, C0)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(0, 5), st.integers(0, C - 1), st.floats(0.01, 1.0), st.data())
def test_adpit_loss_is_zero_for_any_layout_of_the_target_and_positive_off_it(
    count: int, layout: int, c: int, nudge: float, data: st.DataObject
) -> None:
    # A frame with ``count`` sources of class c (and a lone source of another class), laid on the
    # tracks in any of the layouts ADPIT accepts for that count: loss 0.
    other = (c + 1) % C
    events = [Event(0, c, s, 2.0 * s, 0.3 * s) for s in range(count)] + [Event(0, other, 0, -1.0, 0.2)]
    target = targets(events, 1)
    chosen = {1: [(A0, A0, A0)] * 6, 2: PAIR_LAYOUTS, 3: TRIPLE_LAYOUTS}[count][layout]
    pred = torch.from_numpy(output_from(target, {c: chosen}))
    t = torch.from_numpy(target)
    assert adpit_loss(pred, t).item() == 0.0
    # Moving any one entry away from every layout makes it positive.
    entry = data.draw(st.tuples(st.integers(0, TRACKS - 1), st.integers(0, 2), st.integers(0, C - 1)))
    off = pred.clone()
    off[(0, *entry)] += nudge
    assert adpit_loss(off, t).item() > 0.0
