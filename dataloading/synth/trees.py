"""What `avsa synth --layout starss23|yt360` writes beyond the scenes themselves: the STARSS23 class of
each sound label, the label events of a scene, and the names, splits and lists of the two trees
(:mod:`dataloading.layouts` reads them back).

The sound packs hold no speech of women, no telephones, laughter, footsteps or doors, so those STARSS23
classes stay empty (:data:`EMPTY_STARSS_CLASSES`); in the STARSS23 layout only sounds whose label maps
onto a class are drawn, so every audible event is labelled.
"""

from __future__ import annotations

import base64
import hashlib
import io
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from dataloading.dcase import CLASSES, FRAME_SECONDS, Event

if TYPE_CHECKING:  # the scene module pulls in scipy: `avsa synth --help` reads the tables here
    from dataloading.synth.scene import Scene

# Sound label of the packs (dataloading.synth.assets) -> the STARSS23 class it stands for.
STARSS_CLASS_OF_LABEL = {
    "robot_voice": "male speech",  # voices; the procedural stand-in is pitched at 220 Hz, a male register
    "clap": "clapping",
    "machinery": "domestic sounds",  # motors and appliances, like STARSS23's vacuum cleaner or blender
    "drum_loop": "music",
    "kick": "musical instrument",
    "snare": "musical instrument",
    "hihat": "musical instrument",
    "cymbal": "musical instrument",
    "tom": "musical instrument",
    "cowbell": "musical instrument",
    "bubbles": "water tap",
    "bell": "bell",
    "tick": "knock",  # wood blocks and ticks: short knocks on a hard surface
}
STARSS_SOUNDS = frozenset(STARSS_CLASS_OF_LABEL)  # the sound labels drawn in the STARSS23 layout
EMPTY_STARSS_CLASSES = tuple(c for c in CLASSES if c not in STARSS_CLASS_OF_LABEL.values())
STARSS_RATE = 24000  # Hz: the sample rate of STARSS23's foa_dev audio
STARSS_FOLDS = {"train": 3, "test": 4}  # as STARSS23's development split: fold 3 trains, fold 4 tests
YT_ID_CHARS = 11


def split_of(index: int, videos: int) -> str:
    """``train`` or ``test`` for scene ``index`` of ``videos``: the last quarter (at least one scene of two
    or more) is the test split."""
    tests = max(1, videos // 4) if videos > 1 else 0
    return "test" if index >= videos - tests else "train"


def starss_stem(index: int, videos: int) -> str:
    """``dev-{train,test}-sony/fold{F}_room{R}_mix{NNN}`` of scene ``index``: each synthetic scene is a
    shoebox room of its own, so the room number is the scene's, as is the mix number (from 1)."""
    split = split_of(index, videos)
    return f"dev-{split}-sony/fold{STARSS_FOLDS[split]}_room{index + 1}_mix{index + 1:03d}"


def scene_events(scene: Scene) -> list[Event]:
    """The DCASE label events of a rendered ``scene``: per 100-ms frame, every sounding source whose label
    has a STARSS23 class and that is on at the frame's middle, with its direction (radians) and distance
    (metres) there; the source index counts the instances of a class in the scene (0, 1, …)."""
    events: list[Event] = []
    instances: dict[str, int] = {}
    times = (np.arange(round(scene.seconds / FRAME_SECONDS)) + 0.5) * FRAME_SECONDS
    for source in scene.sources:
        name = STARSS_CLASS_OF_LABEL.get(source.sound.label) if source.sound else None
        if name is None or not source.events:
            continue
        instance = instances[name] = instances.get(name, -1) + 1
        azimuth, elevation = source.direction(times)
        cls, distance = CLASSES.index(name), round(source.distance, 2)  # the CSV keeps whole centimetres
        events += [
            Event(int(f), cls, instance, float(azimuth[f]), float(elevation[f]), distance)
            for f in np.flatnonzero(source.active(times))
        ]
    return events


def wav_bytes(foa: np.ndarray, rate: int, bits: int = 24) -> bytes:
    """FOA ``[4, N]`` (ACN/SN3D) as a 4-channel WAV of ``bits``-bit PCM at ``rate`` Hz."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(foa.T, -1.0, 1.0), rate, format="WAV", subtype=f"PCM_{bits}")
    return buf.getvalue()


def yt_stem(seed: int, index: int) -> str:
    """``{YTID}-{START}`` of scene ``index``: a fake 11-character YouTube id from (seed, index), and a
    start (seconds into the pretend source video) that varies between scenes."""
    digest = hashlib.sha256(f"yt360:{seed}:{index}".encode()).digest()
    return f"{base64.urlsafe_b64encode(digest).decode()[:YT_ID_CHARS]}-{10 * (index % 6)}"


def yt_lists(seed: int, indices: list[int], videos: int) -> dict[str, bytes]:
    """``train.txt``, ``test.txt`` (YouTube ids of each split) and ``segments.txt`` (``<ytid> s1,…``) for
    the scenes ``indices`` of ``videos``."""
    splits: dict[str, str] = {"train.txt": "", "test.txt": ""}
    segments = ""
    for index in sorted(indices):
        ytid, _, start = yt_stem(seed, index).rpartition("-")
        splits[f"{split_of(index, videos)}.txt"] += f"{ytid}\n"
        segments += f"{ytid} {start}\n"
    return {name: text.encode() for name, text in (splits | {"segments.txt": segments}).items()}
