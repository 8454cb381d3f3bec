"""The published folder layouts of the two public datasets with FOA audio and 360° video, listed as
:class:`Recording` s: the files of one recording paired by stem, with its split, fold and room.

STARSS23 (DCASE 2023/2024 Task 3), as its zips unpack::

    ROOT/foa_dev/dev-{train,test}-{sony,tau}/foldF_roomR_mixNNN.wav   24 kHz, 4-ch FOA (ACN/SN3D)
    ROOT/video_dev/<same folder>/<same stem>.mp4                      equirect, Ricoh Theta V
    ROOT/metadata_dev/<same folder>/<same stem>.csv                   DCASE labels (dataloading.dcase)
    ROOT/mic_dev/...                                                  tetrahedral mic format: refused

YT-360 as the AVSA reference code stores it::

    ROOT/video/{YTID}-{START}.mp4      ROOT/audio/{YTID}-{START}.m4a (AAC 4.0, AmbiX)
    ROOT/train.txt, ROOT/test.txt      one YouTube id per line: the split
    ROOT/segments.txt                  "<ytid> s1,s2,...": start seconds of the 10-s clips

Nothing here decodes media; a file that is missing or unpaired is a rejection with its reason, so the
manifest of a run over the layout accounts for every file found.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field

from dataloading.config import Layout, StorageConfig
from dataloading.dcase import Event, LabelError, parse_labels
from dataloading.schema import DatasetOrigin
from dataloading.storage import filesystem, join

LAYOUTS: tuple[Layout, ...] = typing.get_args(Layout)

STARSS_AUDIO, STARSS_VIDEO, STARSS_LABELS, STARSS_MIC = "foa_dev", "video_dev", "metadata_dev", "mic_dev"
STARSS_STEM = re.compile(r"fold(?P<fold>\d+)_room(?P<room>\d+)_mix(?P<mix>\d+)")
STARSS_SPLITS = ("dev-train", "dev-test")  # the split is the start of the folder name (dev-train-sony)
MIC_REFUSED = (
    "tetrahedral mic format (mic_dev) is not converted to FOA here; use the foa_dev audio of the same "
    "recording (it is the same capture, encoded to ambisonics by the dataset authors)"
)
YT_VIDEO, YT_AUDIO, YT_SEGMENTS, YT_SPLITS = "video", "audio", "segments.txt", ("train", "test")
YT_STEM = re.compile(r"(?P<ytid>.+)-(?P<start>\d+(?:\.\d+)?)")


class LayoutError(ValueError):
    """A dataset root that does not have the layout asked for; ``str(exc)`` says what is missing."""


@dataclass(frozen=True)
class Recording:
    """One recording of a layout: URLs of its video, FOA audio and label CSV (``None`` where absent), its
    ``split`` (``dev-train``/``dev-test`` for STARSS23, ``train``/``test`` for YT-360, ``""`` unknown),
    STARSS23 ``fold`` and ``room`` (``-1`` for YT-360) and a ``problem`` that rejects it (None: usable)."""

    stem: str
    video: str | None
    audio: str | None
    labels: str | None
    split: str
    fold: int = -1
    room: int = -1
    problem: str | None = None

    def origin(self, layout: Layout) -> DatasetOrigin:
        """The ``dataset`` block of the sample JSON: where this clip comes from in its layout."""
        return DatasetOrigin(layout, self.stem, self.split, self.fold, self.room)


@dataclass
class Listing:
    """The recordings of a layout (usable or not) and stray files that belong to no recording."""

    recordings: list[Recording]
    strays: dict[str, str] = field(default_factory=dict)  # URL -> why it is not used

    def usable(self, need: Iterable[str] = ("video", "audio")) -> list[Recording]:
        """Recordings without a problem that have every part in ``need`` (``video``/``audio``/``labels``)."""
        return [r for r in self.recordings if r.problem is None and all(getattr(r, p) for p in need)]

    def rejected(self, need: Iterable[str] = ("video", "audio")) -> dict[str, str]:
        """URL -> reason for every file that :meth:`usable` leaves out (the strays included)."""
        need = tuple(need)
        out = dict(self.strays)
        for r in self.recordings:
            reason = r.problem or missing(r, need)
            if reason:  # a listed clip with no file at all is accounted for under its stem
                for url in [u for u in (r.video, r.audio, r.labels) if u] or [r.stem]:
                    out[url] = reason
        return out


def missing(recording: Recording, need: Iterable[str]) -> str | None:
    """Why ``recording`` lacks a part of ``need`` (naming the file it expected), or None."""
    absent = [part for part in need if getattr(recording, part) is None]
    if not absent:
        return None
    return f"unpaired: {recording.stem} has no {' and no '.join(absent)} file (files are paired by stem)"


def _files(root: str, folder: str, storage: StorageConfig | None) -> dict[str, str]:
    """``relative path without suffix -> URL`` for every file under ``root/folder`` (recursively)."""
    fs, base = filesystem(join(root, folder), storage)
    if not fs.isdir(base):
        return {}
    scheme = root.split("://", 1)[0] + "://" if "://" in root else ""
    out = {}
    for path in sorted(fs.find(base)):
        relative = path[len(base) :].lstrip("/")
        out[relative.rsplit(".", 1)[0]] = scheme + path
    return out


def starss23(root: str, storage: StorageConfig | None = None) -> Listing:
    """The STARSS23 development set under ``root`` (foa_dev + video_dev + metadata_dev, and mic_dev)."""
    audio = _files(root, STARSS_AUDIO, storage)
    video = _files(root, STARSS_VIDEO, storage)
    labels = _files(root, STARSS_LABELS, storage)
    mic = _files(root, STARSS_MIC, storage)
    if not (audio or video or labels or mic):
        raise LayoutError(
            f"{root} is not a STARSS23 tree: none of {STARSS_AUDIO}/, {STARSS_VIDEO}/, {STARSS_LABELS}/ "
            "is there (unzip foa_dev.zip, video_dev.zip and metadata_dev.zip into one folder)"
        )
    recordings, strays = [], {}
    for relative in sorted(audio.keys() | video.keys() | labels.keys()):
        folder, _, stem = relative.rpartition("/")
        split = next((s for s in STARSS_SPLITS if folder.startswith(s)), "")
        match = STARSS_STEM.fullmatch(stem)
        problem = None
        if not match:
            problem = f"file name {stem!r} is not foldF_roomR_mixNNN (the STARSS23 naming)"
        elif not split:
            problem = f"folder {folder!r} is not dev-train-* or dev-test-*"
        recordings.append(
            Recording(
                stem=relative,
                video=video.get(relative),
                audio=audio.get(relative),
                labels=labels.get(relative),
                split=split,
                fold=int(match["fold"]) if match else -1,
                room=int(match["room"]) if match else -1,
                problem=problem,
            )
        )
    strays |= {url: MIC_REFUSED for url in mic.values()}
    return Listing(recordings, strays)


def _ids(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}


def yt360(root: str, storage: StorageConfig | None = None) -> Listing:
    """The YT-360 clips under ``root`` (video/ + audio/, split by train.txt/test.txt, clips listed in
    segments.txt; a listed clip whose files are absent is a rejection, as is a file it does not list)."""
    video = _files(root, YT_VIDEO, storage)
    audio = _files(root, YT_AUDIO, storage)
    if not (video or audio):
        raise LayoutError(f"{root} is not a YT-360 tree: no {YT_VIDEO}/ or {YT_AUDIO}/ folder with files")
    fs, _ = filesystem(root, storage)

    def text(name: str) -> str | None:
        _, path = filesystem(join(root, name), storage)
        return fs.cat_file(path).decode() if fs.exists(path) else None

    splits = {name: _ids(body) for name in YT_SPLITS if (body := text(f"{name}.txt")) is not None}
    segments = text(YT_SEGMENTS)
    listed: set[str] | None = None
    if segments is not None:
        listed = set()
        for line in segments.splitlines():
            ytid, _, starts = line.strip().partition(" ")
            listed |= {f"{ytid}-{s.strip()}" for s in starts.split(",") if s.strip()}
    recordings = []
    for stem in sorted(video.keys() | audio.keys() | (listed or set())):
        match = YT_STEM.fullmatch(stem.rsplit("/", 1)[-1])
        ytid = match["ytid"] if match else stem
        split = next((name for name, ids in splits.items() if ytid in ids), "")
        problem = None
        if not match:
            problem = f"file name {stem!r} is not {{YTID}}-{{START}} (the YT-360 naming)"
        elif listed is not None and stem not in listed:
            problem = f"{stem} is not listed in {YT_SEGMENTS}"
        elif splits and not split:
            problem = f"YouTube id {ytid} is in neither train.txt nor test.txt"
        url_video = video.get(stem)
        url_audio = audio.get(stem)
        if listed is not None and stem in listed and not (url_video or url_audio):
            problem = f"{stem} is listed in {YT_SEGMENTS} but neither {YT_VIDEO}/ nor {YT_AUDIO}/ has it"
        recordings.append(Recording(stem, url_video, url_audio, None, split, problem=problem))
    return Listing(recordings)


def read_labels(url: str, storage: StorageConfig | None = None) -> list[Event]:
    """The events of the DCASE label CSV at ``url`` (radians, 100-ms frames); raises
    :class:`~dataloading.dcase.LabelError` naming ``url`` and the line for a file that cannot be used."""
    fs, path = filesystem(url, storage)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{url}: cannot read the label file ({type(exc).__name__}: {exc})") from exc
    return parse_labels(text, url)


def listing(layout: Layout, root: str, storage: StorageConfig | None = None) -> Listing:
    """The recordings of ``root`` read as ``layout`` (``files`` is not a layout of recordings)."""
    if layout == "starss23":
        return starss23(root, storage)
    if layout == "yt360":
        return yt360(root, storage)
    raise LayoutError(f"layout {layout!r} has no recordings listing; use one of starss23, yt360")
