"""Scenes: a room, a background and sound sources with trajectories, sampled from a seed.

Angles are radians inside (azimuth counter-clockwise from front +X toward left +Y, elevation
up), degrees only in the ground-truth JSON. Times are seconds, distances metres.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dataloading import seeds
from dataloading.config import World
from dataloading.seeds import stable_seed
from dataloading.synth.assets import Catalog, SoundAsset

# The ground-truth JSON's own version: it describes a generated scene (sources, trajectories, room)
# and changes with the generator, not with the training sample format (dataloading.schema).
SCENE_SCHEMA_VERSION = 1
TRAJECTORY_HZ = 10.0  # ground-truth trajectory samples per second


@dataclass(frozen=True)
class ObjectClass:
    """A kind of visible object, its picture and the sound class it makes (``None``: silent)."""

    sprite: str
    sound: str | None
    width_m: float  # physical width, sets the angular size at a given distance


# Each visible object class is tied to one sound class.
OBJECT_CLASSES = {
    "horse": ObjectClass("horse", "horse", 2.2),
    "rocket": ObjectClass("rocket", "jet", 2.5),
    "astronaut": ObjectClass("astronaut", "robot_voice", 0.9),
    "cat": ObjectClass("chelsea", "animal", 0.7),
    "coffee": ObjectClass("coffee", "bubbles", 0.5),
    "clock": ObjectClass("clock_motion", "tick", 0.6),
    "motorcycle": ObjectClass("motorcycle_left", "engine", 2.0),
    "drums": ObjectClass("drum", "drum_loop", 0.9),
    "pillar": ObjectClass("pillar", None, 0.25),
}
SOUNDING_CLASSES = tuple(k for k, v in OBJECT_CLASSES.items() if v.sound)
OFFSCREEN_LABELS = ("wind", "bird", "horn", "machinery", "crowd")  # heard, never seen

Kind = Literal["visible", "offscreen", "silent", "occluder"]


@dataclass(frozen=True)
class WorldSpec:
    """What a scene of one world (difficulty) holds. Counts are inclusive (low, high) ranges; angles
    are degrees here, as they are typed in a config.

    ``width_deg`` None: an object's angular width follows from its class's physical width at its
    distance (6°–50°); a range: drawn from it. ``apart_deg`` None: objects go anywhere (the first may
    straddle the seam at the back with ``seam_chance``, the second sit high up or low down with
    ``pole_chance``); a number: every visible object stays whole on one side of the seam and at least
    this far in azimuth from the others for the whole scene (its drift included).
    """

    visible: tuple[int, int]  # visible, sounding objects
    offscreen: tuple[int, int]  # sounds no object makes, heard from anywhere
    silent: tuple[int, int]  # look-alikes of sounding objects that make no sound
    pillar_chance: float  # that a visible object has a pillar in front, covering part of it
    distinct_classes: bool  # no two visible objects of one class
    elevation_deg: tuple[float, float]  # centre elevation of a visible object (it oscillates ±0–4°)
    width_deg: tuple[float, float] | None
    apart_deg: float | None
    seam_chance: float = 0.0
    pole_chance: float = 0.0

    def __post_init__(self) -> None:
        if self.apart_deg is not None and self.width_deg is None:
            raise ValueError("objects kept apart need a drawn width_deg: the clearance depends on it")


WORLDS: dict[World, WorldSpec] = {
    # Clutter on purpose: look-alikes that make no sound, pillars, sounds from off screen, objects across
    # the seam and near the poles.
    "default": WorldSpec(
        visible=(2, 4),
        offscreen=(0, 2),
        silent=(1, 2),
        pillar_chance=0.35,
        distinct_classes=False,
        elevation_deg=(-15.0, 25.0),
        width_deg=None,
        apart_deg=None,
        seam_chance=0.5,
        pole_chance=0.5,
    ),
    # Whether a trunk can learn objects at all: one or two big objects (a good part of a 25°–76° crop)
    # of distinct classes near the horizon, far apart, nothing else to see or hear.
    "easy": WorldSpec(
        visible=(1, 2),
        offscreen=(0, 0),
        silent=(0, 0),
        pillar_chance=0.0,
        distinct_classes=True,
        elevation_deg=(-10.0, 10.0),
        width_deg=(35.0, 60.0),
        apart_deg=70.0,
    ),
}
# How much further than half its width a sprite reaches in azimuth off the horizon (its corners, at
# the elevations of the easy world): the clearance kept from the seam.
SEAM_MARGIN = np.deg2rad(5.0)
PLACEMENT_TRIES = 1000  # draws of a position before an object is left out of a constrained world


@dataclass(frozen=True)
class Room:
    """A shoebox room; ``family`` says which pool it was drawn from ("train" or "eval")."""

    dims: tuple[float, float, float]  # metres
    rt60: float  # seconds
    mic: tuple[float, float, float]  # camera/microphone position, metres
    family: str


@dataclass
class Source:
    """One object or sound. Direction over time: azimuth drifts linearly, elevation oscillates."""

    id: int
    kind: Kind
    object_class: str | None
    sound: SoundAsset | None
    azimuth: float  # radians at t=0
    elevation: float  # radians, centre of the oscillation
    azimuth_rate: float  # radians per second
    elevation_amp: float  # radians
    elevation_period: float  # seconds
    distance: float  # metres
    width: float  # angular width on screen, radians
    gain_db: float
    events: list[tuple[float, float]] = field(default_factory=list)  # (on, off) seconds

    def direction(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(azimuth wrapped to [-π, π), elevation) in radians at times ``t`` (seconds)."""
        t = np.asarray(t, dtype=np.float64)
        az = self.azimuth + self.azimuth_rate * t
        el = self.elevation + self.elevation_amp * np.sin(2 * np.pi * t / self.elevation_period)
        return (az + np.pi) % (2 * np.pi) - np.pi, el

    @property
    def visible(self) -> bool:
        return self.kind in ("visible", "silent", "occluder")

    def active(self, t: np.ndarray) -> np.ndarray:
        """Boolean mask: is the source sounding at times ``t``."""
        t = np.asarray(t)
        mask = np.zeros(t.shape, bool)
        for on, off in self.events:
            mask |= (t >= on) & (t < off)
        return mask


@dataclass
class Scene:
    seed: int
    seconds: float
    room: Room
    background: str
    noise_db: float  # diffuse background noise level relative to a 0 dB source at 1 m
    sources: list[Source]
    # Radians the panorama is turned by (about the vertical, like a source's azimuth): random per scene,
    # so where a crop lies in a background says nothing about which scene, or direction, it is.
    background_yaw: float = 0.0


def unit_vector(azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] (x front, y left, z up) for angles in radians."""
    ce = np.cos(elevation)
    return np.stack([ce * np.cos(azimuth), ce * np.sin(azimuth), np.sin(elevation)], axis=-1)


# Room families: disjoint size and reverberation ranges, so a room of one family is never one of another.
# "train" rooms hold the pretraining videos; a probe's head is trained in "probe" rooms and tested in "eval"
# rooms, so a DOA head is scored in rooms neither it nor the encoder ever heard.
ROOM_FAMILIES = {
    "probe": ((3.0, 2.5, 2.4), (4.5, 4.0, 2.7), (0.12, 0.24)),
    "train": ((5.0, 4.0, 2.8), (9.0, 7.0, 3.5), (0.25, 0.5)),
    "eval": ((10.0, 7.5, 3.8), (14.0, 10.0, 5.0), (0.5, 0.9)),
}


def sample_room(rng: np.random.Generator, family: str) -> Room:
    """A room of ``family`` (:data:`ROOM_FAMILIES`): dimensions in metres and RT60 in seconds drawn
    uniformly from its ranges, the camera near the middle at head height."""
    low, high, (rt_low, rt_high) = ROOM_FAMILIES[family]
    dims = rng.uniform(low, high)
    rt60 = rng.uniform(rt_low, rt_high)
    mic = dims * rng.uniform([0.4, 0.4, 0], [0.6, 0.6, 0])
    mic[2] = min(1.6, dims[2] / 2)  # camera at head height
    return Room(
        tuple(float(d) for d in np.round(dims, 3)),
        round(float(rt60), 3),
        tuple(float(m) for m in np.round(mic, 3)),
        family,
    )


def max_distance(room: Room, directions: np.ndarray, margin: float = 0.3) -> float:
    """The largest distance (m) at which every direction in ``directions`` [..., 3] stays inside
    the room, ``margin`` metres from the walls."""
    mic, dims = np.array(room.mic), np.array(room.dims)
    with np.errstate(divide="ignore"):
        to_wall = np.where(directions > 0, (dims - margin - mic) / directions, (margin - mic) / directions)
    to_wall = np.where(np.abs(directions) < 1e-9, np.inf, to_wall)
    return float(to_wall.min())


def sample_events(rng: np.random.Generator, seconds: float) -> list[tuple[float, float]]:
    """Alternating on/off times in seconds: sounds come and go like real ones.

    The first onset and the shortest tail scale with ``seconds`` (at most 2 s and 0.5 s), so a sound of
    a short scene is heard for most of it: with fixed ones a quarter of the sounds of a 2-s scene never
    started and the rest sounded for its last half only, leaving little for a pretext task to match.
    """
    events, t = [], rng.uniform(0, min(2.0, seconds / 4))
    while t < seconds - min(0.5, seconds / 4):
        on = rng.uniform(1.5, 6.0)
        events.append((round(t, 3), round(min(seconds, t + on), 3)))
        t += on + rng.uniform(0.5, 4.0)
    return events


def take_turns(rng: np.random.Generator, sources: list[Source], seconds: float) -> None:
    """Give the sounding sources non-overlapping events in turn (one at a time), for tests and
    localisation sets where each source must be heard alone."""
    sounding = [s for s in sources if s.sound is not None]
    if not sounding:
        return
    for s in sounding:
        s.events = []
    t, k = 0.2, 0
    while t < seconds - 0.5:
        on = rng.uniform(1.0, 2.0)
        sounding[k % len(sounding)].events.append((round(t, 3), round(min(seconds, t + on), 3)))
        t, k = t + on + 0.3, k + 1  # 0.3 s gap lets the reverb of the previous one decay


def pick_sound(
    rng: np.random.Generator, catalog: Catalog, label: str, exclude: set[str]
) -> SoundAsset | None:
    choices = [s for s in catalog.by_label(label) if s.source not in exclude] or catalog.by_label(label)
    return choices[rng.integers(len(choices))] if choices else None


def stays_within(start: float, end: float, low: float, high: float) -> bool:
    """Whether an angle moving linearly from ``start`` to ``end`` (radians, unwrapped) stays inside the
    arc [``low``, ``high``] (radians, ``low`` <= ``high`` < ``low`` + 2π) modulo 2π the whole way."""
    lo, hi = min(start, end), max(start, end)
    turn = 2 * np.pi * np.floor((lo - low) / (2 * np.pi))  # the copy of the arc lo falls in
    return bool(hi <= high + turn)


def drift_rate(rng: np.random.Generator) -> float:
    """An azimuth drift in radians per second: 0.5–3 °/s either way."""
    return float(np.deg2rad(rng.uniform(0.5, 3.0)) * rng.choice([-1, 1]))


def clear_placement(
    rng: np.random.Generator, width: float, others: list[Source], seconds: float, apart: float
) -> tuple[float, float] | None:
    """(azimuth at t = 0, drift rate) in radians and radians per second of an object ``width`` radians
    wide that stays clear of the seam and at least ``apart`` radians in azimuth from each of ``others``
    for ``seconds``; None when :data:`PLACEMENT_TRIES` draws found no such place."""
    edge = np.pi - width / 2 - SEAM_MARGIN
    for _ in range(PLACEMENT_TRIES):
        az, rate = float(rng.uniform(-np.pi, np.pi)), drift_rate(rng)
        end = az + rate * seconds
        if stays_within(az, end, -edge, edge) and all(
            stays_within(az - o.azimuth, end - o.azimuth - o.azimuth_rate * seconds, apart, 2 * np.pi - apart)
            for o in others
        ):
            return az, rate
    return None


def sample_scene(
    seed: int,
    seconds: float,
    catalog: Catalog,
    *,
    world: World = "default",
    room_family: str = "train",
    exclude_sources: set[str] | frozenset[str] = frozenset(),
    one_at_a_time: bool = False,
    sound_labels: Collection[str] | None = None,
) -> Scene:
    """Draw a scene of ``world`` (:data:`WORLDS`). ``exclude_sources`` keeps held-out recordings (the
    classification test split) out of training videos. ``sound_labels`` (None: any) limits what is heard
    to those sound labels: visible objects are drawn from the classes whose sound is one, off-screen
    sounds from the rest of them (those no object makes)."""
    spec = WORLDS[world]
    sounding, offscreen = SOUNDING_CLASSES, OFFSCREEN_LABELS
    if sound_labels is not None:
        sounding = tuple(k for k in SOUNDING_CLASSES if OBJECT_CLASSES[k].sound in sound_labels)
        made = {OBJECT_CLASSES[k].sound for k in SOUNDING_CLASSES}
        offscreen = tuple(sorted(set(sound_labels) - made))
    rng = np.random.default_rng(stable_seed(seeds.SCENE, seed))
    room = sample_room(rng, room_family)
    times = np.linspace(0, seconds, max(2, int(seconds * 2)))
    exclude = set(exclude_sources)
    sources: list[Source] = []

    def add(
        kind: Kind,
        object_class: str | None,
        sound: SoundAsset | None,
        az: float,
        el: float,
        placed: tuple[float, float] | None = None,
    ) -> Source:
        """A source at (az, el) radians; ``placed`` (width, drift rate): both chosen already."""
        obj = OBJECT_CLASSES.get(object_class) if object_class else None
        rate = (drift_rate(rng) if kind != "occluder" else 0.0) if placed is None else placed[1]
        src = Source(
            id=len(sources),
            kind=kind,
            object_class=object_class,
            sound=sound,
            azimuth=az,
            elevation=el,
            azimuth_rate=float(rate),
            elevation_amp=float(np.deg2rad(rng.uniform(0, 4))),
            elevation_period=float(rng.uniform(10, 30)),
            distance=float(rng.uniform(1.0, 2.0)),
            width=0.0,
            gain_db=float(rng.uniform(-6, 0) if kind == "visible" else rng.uniform(-14, -8)),
        )
        if kind == "occluder":
            src.elevation_amp = 0.0
        az_t, el_t = src.direction(times)
        src.distance = min(src.distance, 0.9 * max_distance(room, unit_vector(az_t, el_t)))
        if placed is not None:
            src.width = placed[0]
        elif obj:
            src.width = float(
                np.clip(2 * np.arctan(obj.width_m / 2 / src.distance), np.deg2rad(6), np.deg2rad(50))
            )
        if sound is not None:
            src.events = sample_events(rng, seconds)
        sources.append(src)
        return src

    visible: list[Source] = []
    for k in range(rng.integers(spec.visible[0], spec.visible[1] + 1) if sounding else 0):
        taken = {s.object_class for s in visible} if spec.distinct_classes else set()
        classes = [c for c in sounding if c not in taken]
        if not classes:
            break
        cls = classes[rng.integers(len(classes))]
        sound = pick_sound(rng, catalog, OBJECT_CLASSES[cls].sound or "", exclude)
        az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(*spec.elevation_deg))
        if k == 0 and rng.random() < spec.seam_chance:
            az = np.pi - np.deg2rad(rng.uniform(-8, 8))  # straddles the seam at the back
        elif k == 1 and rng.random() < spec.pole_chance:
            el = np.deg2rad(rng.uniform(35, 50)) * rng.choice([-1, 1])  # high up or low down
        placed = None
        if spec.width_deg is not None:
            width = float(np.deg2rad(rng.uniform(*spec.width_deg)))
            where = (
                clear_placement(rng, width, visible, seconds, np.deg2rad(spec.apart_deg))
                if spec.apart_deg is not None
                else (float(az), drift_rate(rng))
            )
            if where is None:
                break  # no place left this far from the others for the whole scene
            az, placed = where[0], (width, where[1])
        src = add("visible", cls, sound, float(az), float(el), placed)
        visible.append(src)
        if rng.random() < spec.pillar_chance:  # a pillar in front, covering part of it
            offset = src.width * rng.uniform(0.25, 0.45) * rng.choice([-1, 1])
            pillar = add("occluder", "pillar", None, src.azimuth + offset, 0.0)
            pillar.distance = 0.6 * src.distance  # nearer: drawn over the object
    for _ in range(rng.integers(spec.offscreen[0], spec.offscreen[1] + 1) if offscreen else 0):
        label = offscreen[rng.integers(len(offscreen))]
        sound = pick_sound(rng, catalog, label, exclude)
        if sound is not None:
            add(
                "offscreen",
                None,
                sound,
                float(rng.uniform(-np.pi, np.pi)),
                float(np.deg2rad(rng.uniform(-10, 40))),
            )
    for k in range(rng.integers(spec.silent[0], spec.silent[1] + 1)):
        cls = SOUNDING_CLASSES[rng.integers(len(SOUNDING_CLASSES))]  # a look-alike that makes no sound
        el = np.deg2rad(rng.uniform(-15, 20))
        if k == 0 and rng.random() < 0.5:
            el = np.deg2rad(rng.uniform(55, 70)) * rng.choice([-1, 1])  # near a pole: strongest bending
        add("silent", cls, None, float(rng.uniform(-np.pi, np.pi)), float(el))
    if one_at_a_time:
        take_turns(rng, sources, seconds)
    background = catalog.backgrounds[rng.integers(len(catalog.backgrounds))]
    noise_db = float(rng.uniform(-40, -30))
    return Scene(seed, seconds, room, background, noise_db, sources, float(rng.uniform(-np.pi, np.pi)))


def ground_truth(scene: Scene, skipped: list[dict[str, str]]) -> dict:
    """The user-facing ground truth (degrees, seconds, metres) of a rendered scene."""
    times = np.arange(0, scene.seconds + 1e-9, 1 / TRAJECTORY_HZ)
    sources = []
    for s in scene.sources:
        az, el = s.direction(times)
        sources.append(
            {
                "id": s.id,
                "kind": s.kind,
                "visible": s.visible,
                "object_class": s.object_class,
                "sound_class": s.sound.label if s.sound else None,
                "sound_file": s.sound.name if s.sound else None,
                "sound_source": s.sound.source if s.sound else None,
                "active": [list(e) for e in s.events],
                "distance_m": round(s.distance, 3),
                "angular_width_deg": round(float(np.rad2deg(s.width)), 2),
                "gain_db": round(s.gain_db, 2),
                "trajectory": [
                    [round(float(t), 3), round(float(a), 3), round(float(e), 3)]
                    for t, a, e in zip(times, np.rad2deg(az), np.rad2deg(el), strict=True)
                ],
            }
        )
    return {
        "schema_version": SCENE_SCHEMA_VERSION,
        "seed": scene.seed,
        "duration_s": scene.seconds,
        "conventions": {
            "audio": "FOA AmbiX: ACN channel order W,Y,Z,X; SN3D",
            "azimuth": "degrees, counter-clockwise from front (+X) toward left (+Y)",
            "elevation": "degrees, up positive",
            "trajectory": "[t seconds, azimuth, elevation]",
        },
        "room": {
            "dims_m": list(scene.room.dims),
            "rt60_s": scene.room.rt60,
            "mic_m": list(scene.room.mic),
            "family": scene.room.family,
        },
        "background": scene.background.rsplit("/", 1)[-1],
        "background_yaw_deg": round(float(np.rad2deg(scene.background_yaw)), 3),
        "noise_db": round(scene.noise_db, 2),
        "sources": sources,
        "skipped_assets": skipped,
    }
