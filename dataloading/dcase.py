"""The DCASE SELD label format (STARSS23 metadata and DCASE submission CSVs), read and written in one place.

A row is ``frame,class,source_or_track,azimuth,elevation[,distance]``: ``frame`` counts 100 ms label
frames from 0, a frame repeats when events overlap, angles are integer-rounded degrees with azimuth
counter-clockwise from the front (0 = front, 90 = left, our convention) and elevation up, and distance
is in cm (STARSS 2024 only). In metadata the third column is the source (instance) index; in a
submission it is the output track. Inside code every angle is radians (:class:`Event`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

FRAME_SECONDS = 0.1  # one label frame
CLASSES = (
    "female speech",
    "male speech",
    "clapping",
    "telephone",
    "laughter",
    "domestic sounds",
    "footsteps",
    "door",
    "music",
    "musical instrument",
    "water tap",
    "bell",
    "knock",
)


class LabelError(ValueError):
    """A label CSV that cannot be used; ``str(exc)`` names the file, the line and the fix."""


@dataclass(frozen=True)
class Event:
    """One active event in one label frame: class index into :data:`CLASSES`, source (metadata) or
    track (predictions) index, direction in radians, distance in metres (``None`` when not given)."""

    frame: int
    class_index: int
    source: int
    azimuth: float
    elevation: float
    distance: float | None = None


def parse_labels(text: str, name: str) -> list[Event]:
    """The events of a DCASE CSV ``text`` (``name`` is its file, for the message), in file order.

    Raises :class:`LabelError` naming the line for a row that is not 5 or 6 numbers, a negative frame,
    a class outside 0..12, an azimuth outside [-180, 180] or an elevation outside [-90, 90] degrees.
    """
    events: list[Event] = []
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) not in (5, 6):
            raise LabelError(
                f"{name}:{line}: expected 5 or 6 columns (frame,class,source,azimuth,elevation[,distance]), "
                f"got {len(row)}: {','.join(row)}"
            )
        try:
            frame, cls, source = (int(float(cell)) for cell in row[:3])
            az, el = float(row[3]), float(row[4])
            dist = float(row[5]) / 100.0 if len(row) == 6 else None
        except ValueError:
            raise LabelError(f"{name}:{line}: not a number in {','.join(row)}") from None
        problem = (
            "negative frame"
            if frame < 0
            else f"class {cls} outside 0..{len(CLASSES) - 1}"
            if not 0 <= cls < len(CLASSES)
            else f"azimuth {az}° outside [-180, 180]"
            if not -180.0 <= az <= 180.0
            else f"elevation {el}° outside [-90, 90]"
            if not -90.0 <= el <= 90.0
            else None
        )
        if problem:
            raise LabelError(f"{name}:{line}: {problem}; fix or remove the row")
        events.append(Event(frame, cls, source, math.radians(az), math.radians(el), dist))
    return events


def format_labels(events: Iterable[Event]) -> str:
    """``events`` as a DCASE CSV (sorted by frame, then class, then source; degrees rounded to integers,
    distance in cm when every event has one)."""
    rows = sorted(events, key=lambda e: (e.frame, e.class_index, e.source))
    with_distance = bool(rows) and all(e.distance is not None for e in rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for e in rows:
        az = round(math.degrees(math.remainder(e.azimuth, 2 * math.pi)))
        row = [e.frame, e.class_index, e.source, az, round(math.degrees(e.elevation))]
        if with_distance and e.distance is not None:
            row.append(round(e.distance * 100.0))
        writer.writerow(row)
    return out.getvalue()


def frames_of(events: Iterable[Event]) -> dict[int, list[Event]]:
    """``events`` grouped by label frame (frames without events are absent)."""
    grouped: dict[int, list[Event]] = {}
    for e in events:
        grouped.setdefault(e.frame, []).append(e)
    return grouped


def clip_rows(events: Iterable[Event], start: float, seconds: float) -> list[list[float]]:
    """The label rows of the clip ``[start, start + seconds)`` (seconds into the recording) for the sample
    JSON: ``[frame, class, source, azimuth°, elevation°]`` plus distance in metres where the event has
    one, with ``frame`` counting 100-ms label frames from the clip's start, in :func:`format_labels` order.
    """
    first, end = round(start / FRAME_SECONDS), round((start + seconds) / FRAME_SECONDS)
    inside = [e for e in events if first <= e.frame < end]
    rows: list[list[float]] = []
    for e in sorted(inside, key=lambda e: (e.frame, e.class_index, e.source)):
        row: list[float] = [e.frame - first, e.class_index, e.source]
        row += [round(math.degrees(e.azimuth), 2), round(math.degrees(e.elevation), 2)]
        rows.append(row + ([round(e.distance, 3)] if e.distance is not None else []))
    return rows
