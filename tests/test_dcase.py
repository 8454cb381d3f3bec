"""The DCASE label CSV: round trip in our conventions, and bad rows named."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataloading.dcase import CLASSES, Event, LabelError, format_labels, frames_of, parse_labels

events = st.builds(
    Event,
    frame=st.integers(0, 600),
    class_index=st.integers(0, len(CLASSES) - 1),
    source=st.integers(0, 5),
    azimuth=st.integers(-179, 180).map(math.radians),
    elevation=st.integers(-90, 90).map(math.radians),
)


@given(st.lists(events, max_size=20, unique_by=lambda e: (e.frame, e.class_index, e.source)))
def test_round_trip_keeps_every_event(rows: list[Event]) -> None:
    back = parse_labels(format_labels(rows), "x.csv")
    key = lambda e: (e.frame, e.class_index, e.source)  # noqa: E731
    assert [key(e) for e in back] == sorted(key(e) for e in rows)
    for a, b in zip(back, sorted(rows, key=key), strict=True):
        assert math.isclose(a.azimuth, b.azimuth, abs_tol=1e-9)
        assert math.isclose(a.elevation, b.elevation, abs_tol=1e-9)


def test_published_row_reads_in_our_convention() -> None:
    # frame 3 repeats: two overlapping events; 90° azimuth is the left; distance is cm in the file
    text = "3,0,0,90,10,150\n3,8,1,-30,0,200\n4,0,0,88,10,150\n"
    rows = parse_labels(text, "fold3_room4_mix001.csv")
    assert [e.frame for e in rows] == [3, 3, 4]
    assert rows[0].azimuth == pytest.approx(math.pi / 2) and rows[0].distance == pytest.approx(1.5)
    assert CLASSES[rows[1].class_index] == "music"
    assert len(frames_of(rows)[3]) == 2


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("1,2,0,10", "expected 5 or 6 columns"),
        ("1,x,0,10,0", "not a number"),
        ("1,13,0,10,0", "class 13 outside"),
        ("-1,0,0,10,0", "negative frame"),
        ("1,0,0,200,0", "azimuth 200.0° outside"),
        ("1,0,0,10,95", "elevation 95.0° outside"),
    ],
)
def test_bad_row_names_file_and_line(row: str, says: str) -> None:
    with pytest.raises(LabelError, match=rf"a\.csv:2: .*{says}"):
        parse_labels(f"0,0,0,0,0\n{row}\n", "a.csv")
