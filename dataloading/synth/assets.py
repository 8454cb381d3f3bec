"""Real assets for the generator: Debian packages fetched into a cache, with procedural fallbacks.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache
(``~/.cache/avsa/assets``, or ``$AVSA_ASSET_CACHE``) — nothing is installed on the system.
Where apt is unavailable the generator says so and uses procedural stand-ins, so it always runs.

Chosen packages (download sizes, Debian bookworm), ~70 MB in all:

- ``blender-data`` (31 MB): its 8 CC0 equirectangular HDRIs (1024×512, by Greg Zaal / HDRI
  Haven) are the backgrounds; everything else in the package is deleted after unpacking.
- ``sonic-pi-samples`` (22 MB), ``openttd-opensfx`` (10 MB), ``hydrogen-data`` (7 MB): real
  recordings — drum kits, robot voices, bells, vehicles, animals, wind, birds.

Left out on purpose: ``hydrogen-drumkits`` and ``hedgewars-data`` (~145 MB each) would add kits
and voices but triple the download; ``fluid-soundfont-gm`` (120 MB) holds synthesised notes.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from dataloading.seeds import stable_seed

log = logging.getLogger(__name__)

CACHE_ENV = "AVSA_ASSET_CACHE"
DEFAULT_CACHE = "~/.cache/avsa/assets"
DONE_MARK = ".complete"  # written last: a package dir without it is an interrupted fetch


class AssetError(RuntimeError):
    """An asset is missing or cannot be decoded; the caller reports it and skips it."""


@dataclass(frozen=True)
class Package:
    """A Debian package and the folders of it that are kept after unpacking."""

    name: str
    keep: tuple[str, ...]


PACKAGES = (
    Package("blender-data", ("usr/share/blender/datafiles/studiolights/world",)),
    Package("sonic-pi-samples", ("usr/share/sonic-pi/samples",)),
    Package("openttd-opensfx", ("usr/share/games/openttd/baseset/opensfx",)),
    Package("hydrogen-data", ("usr/share/hydrogen/data/drumkits",)),
)


@dataclass(frozen=True)
class SoundAsset:
    """One recording. ``source`` is who or what made it (a kit, a pack, a recordist): the unit
    that evaluation splits keep disjoint. ``path`` is a file, ``FILE#INDEX`` for a member of an
    OpenTTD ``.cat`` archive, or ``procedural:LABEL:VARIANT``."""

    path: str
    label: str
    source: str
    name: str


@dataclass(frozen=True)
class Catalog:
    """Everything the generator may draw from. ``fallbacks`` names the parts that are procedural."""

    sounds: tuple[SoundAsset, ...]
    backgrounds: tuple[str, ...]  # equirect image paths, or "procedural:K"
    fallbacks: tuple[str, ...] = ()

    def labels(self) -> list[str]:
        return sorted({s.label for s in self.sounds})

    def by_label(self, label: str) -> list[SoundAsset]:
        return [s for s in self.sounds if s.label == label]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The asset cache: ``override``, else ``$AVSA_ASSET_CACHE``, else ``~/.cache/avsa/assets``."""
    return Path(os.path.expanduser(str(override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)))


def fetch_package(package: Package, root: Path) -> Path | None:
    """Download and unpack ``package`` into ``root/NAME`` once; ``None`` (with a warning) if apt fails."""
    target = root / package.name
    if (target / DONE_MARK).exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        log.warning(
            "apt-get/dpkg-deb not found: cannot fetch %s, using procedural assets instead", package.name
        )
        return None
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{package.name}-") as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", "-q", package.name],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=600,
            )
            (deb,) = Path(tmp).glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True, capture_output=True)
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            log.warning(
                "apt-get download %s failed (%s %s): using procedural assets instead "
                "(run `apt-get update` first, or set %s to a cache that has it)",
                package.name,
                type(exc).__name__,
                detail.decode(errors="replace").strip()[-200:],
                CACHE_ENV,
            )
            return None
        staged = Path(tmp) / "staged"
        for keep in package.keep:
            if (Path(tmp) / "x" / keep).exists():
                shutil.copytree(Path(tmp) / "x" / keep, staged / keep)
        (staged / DONE_MARK).write_text(package.name)
        try:
            staged.rename(target)
        except OSError:  # another process finished the same fetch first
            if not (target / DONE_MARK).exists():
                raise
    return target


# --- sound labelling -------------------------------------------------------------------------

# Drum-kit instruments, recognised from file names of every kit.
DRUM_KEYWORDS = (
    ("kick", "kick"),
    ("bd_", "kick"),
    ("drum_bass", "kick"),
    ("snare", "snare"),
    ("sn_", "snare"),
    ("rimshot", "snare"),
    ("hat", "hihat"),
    ("cymbal_closed", "hihat"),
    ("cymbal_pedal", "hihat"),
    ("crash", "cymbal"),
    ("ride", "cymbal"),
    ("splash", "cymbal"),
    ("cymbal", "cymbal"),
    ("tom", "tom"),
    ("clap", "clap"),
    ("cowbell", "cowbell"),
)

# Sonic Pi samples other than drums: name prefix -> label.
SONIC_PI_LABELS = (
    ("mehackit_robot", "robot_voice"),
    ("glitch_robot", "robot_voice"),
    ("perc_bell", "bell"),  # recorded bells; elec_bell and elec_chime are near-pure synth tones
    ("elec_tick", "tick"),
    ("elec_wood", "tick"),
    ("loop_amen", "drum_loop"),
    ("loop_breakbeat", "drum_loop"),
    ("loop_compus", "drum_loop"),
    ("loop_industrial", "drum_loop"),
    ("loop_perc", "drum_loop"),
    ("loop_tabla", "drum_loop"),
    ("misc_crow", "bird"),
)

# OpenSFX members (index in opensfx.cat) -> label; the recordist is parsed from the member's title.
OPENSFX_LABELS = {
    3: "horn",
    4: "horn",
    6: "horn",
    7: "horn",
    10: "horn",
    35: "horn",
    8: "jet",
    9: "jet",
    59: "jet",
    61: "jet",
    69: "jet",
    25: "engine",
    27: "engine",
    28: "engine",
    36: "animal",
    37: "animal",
    67: "animal",
    68: "animal",
    38: "horse",
    46: "bubbles",
    47: "bubbles",
    49: "bubbles",
    52: "wind",
    57: "wind",
    66: "bird",
    72: "bird",
    11: "machinery",
    33: "machinery",
    40: "machinery",
    56: "machinery",
    29: "crowd",
    30: "crowd",
}


def drum_label(name: str) -> str | None:
    lower = name.lower()
    return next((label for key, label in DRUM_KEYWORDS if key in lower), None)


def sonic_pi_sounds(folder: Path) -> list[SoundAsset]:
    """Sonic Pi: the acoustic ``drum_`` kit, the ``elec_`` kit, and one source per ``bd_``/``sn_``
    drum machine; other labelled samples grouped by their pack prefix."""
    out = []
    for path in sorted(folder.glob("*.flac")):
        stem = path.stem
        prefix = stem.split("_")[0]
        label = next((lab for key, lab in SONIC_PI_LABELS if stem.startswith(key)), None)
        if label is None and prefix in ("drum", "elec", "bd", "sn"):
            label = drum_label(stem)
        if label is None:
            continue
        source = stem if prefix in ("bd", "sn") else prefix  # each bd_/sn_ sample is its own machine
        out.append(SoundAsset(str(path), label, f"sonic-pi:{source}", f"sonic-pi/{stem}"))
    return out


def hydrogen_sounds(folder: Path) -> list[SoundAsset]:
    """Hydrogen drum kits: one source per kit, instruments labelled from file names."""
    out = []
    for path in sorted(folder.glob("*/*")):
        label = drum_label(path.stem) if path.suffix.lower() in (".wav", ".flac") else None
        if label:
            kit = path.parent.name
            out.append(SoundAsset(str(path), label, f"hydrogen:{kit}", f"hydrogen/{kit}/{path.stem}"))
    return out


def opensfx_members(cat: Path) -> list[tuple[int, str, int, int]]:
    """The members of an OpenTTD ``.cat`` archive: (index, title, WAV offset, WAV size in bytes).

    Layout: a table of (uint32 offset | 0x80000000, uint32 size); at each offset a length-prefixed,
    NUL-terminated title, then a RIFF WAV.
    """
    data = cat.read_bytes()
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    members = []
    for index in range(count):
        offset, size = struct.unpack_from("<II", data, 8 * index)
        offset &= 0x7FFFFFFF
        title_len = data[offset]
        title = data[offset + 1 : offset + 1 + title_len].rstrip(b"\0").decode("utf-8", "replace")
        members.append((index, title, offset + 1 + title_len, size - 1 - title_len))
    return members


def recordist(title: str) -> str:
    """Who recorded an OpenSFX sound: the original's author if named, else its editor."""
    match = re.search(r'"[^"]*" by "?(.+?)"?(?:,| and |\. )', title) or re.search(r'By "?(.+?)"?\. ', title)
    return match.group(1).strip() if match else "unknown"


def opensfx_sounds(folder: Path) -> list[SoundAsset]:
    cat = folder / "opensfx.cat"
    out = []
    for index, title, _, _ in opensfx_members(cat):
        if index in OPENSFX_LABELS:
            name = title.split('"')[1] if '"' in title else str(index)
            source = f"opensfx:{recordist(title)}"
            out.append(SoundAsset(f"{cat}#{index}", OPENSFX_LABELS[index], source, f"opensfx/{name}"))
    return out


# --- procedural stand-ins ----------------------------------------------------------------------

PROCEDURAL_VARIANTS = 4  # per label: distinct "sources" so that eval splits still have disjoint ones
PROCEDURAL_LABELS = (
    "kick",
    "snare",
    "hihat",
    "cymbal",
    "tom",
    "robot_voice",
    "bell",
    "tick",
    "drum_loop",
    "horn",
    "jet",
    "engine",
    "animal",
    "horse",
    "bubbles",
    "wind",
    "bird",
    "machinery",
    "crowd",
)


def procedural_sounds() -> list[SoundAsset]:
    return [
        SoundAsset(f"procedural:{label}:{v}", label, f"procedural:{label}-{v}", f"procedural/{label}-{v}")
        for label in PROCEDURAL_LABELS
        for v in range(PROCEDURAL_VARIANTS)
    ]


def synthesize(label: str, variant: int, rate: int) -> np.ndarray:
    """A recognisable stand-in for ``label``: pitched tones for voiced classes, shaped noise for the
    rest, 0.3–2 s long. Deterministic in (label, variant). Returns float32 mono at ``rate`` Hz."""
    rng = np.random.default_rng(stable_seed(label, variant))
    pitched = label in ("robot_voice", "bell", "horn", "animal", "horse", "bird", "kick", "tom")
    seconds = 0.3 if label in ("kick", "snare", "hihat", "tom", "bubbles", "tick") else 1.5
    t = np.arange(int(seconds * rate)) / rate
    if pitched:
        f0 = {"bird": 2500.0, "bell": 880.0, "kick": 60.0, "tom": 140.0}.get(label, 220.0) * (
            1 + 0.15 * variant
        )
        vibrato = 1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
        x = sum(np.sin(k * phase) / k for k in range(1, 6))
    else:
        x = rng.standard_normal(t.size)
        cutoff = {"hihat": 0.9, "cymbal": 0.8, "wind": 0.02, "engine": 0.05}.get(label, 0.3)
        x = np.convolve(x, np.ones(max(1, int(1 / cutoff))) / max(1, int(1 / cutoff)), mode="same")
    decay = {"kick": 12.0, "snare": 15.0, "hihat": 30.0, "tom": 8.0, "bell": 2.0, "tick": 60.0}.get(
        label, 0.5
    )
    env = np.exp(-decay * t) * np.minimum(1, t / 0.005)
    x = x * env
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


# --- loading -----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def load_sound(path: str, rate: int) -> np.ndarray:
    """Decode a sound to float32 mono at ``rate`` Hz, peak-normalised to 0.5.

    Raises :class:`AssetError` if it is missing, undecodable or silent.
    """
    try:
        if path.startswith("procedural:"):
            _, label, variant = path.split(":")
            return synthesize(label, int(variant), rate)
        if "#" in path:
            cat, index = path.rsplit("#", 1)
            _, _, offset, size = opensfx_members(Path(cat))[int(index)]
            blob = Path(cat).read_bytes()[offset : offset + size]
            audio, source_rate = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
        else:
            audio, source_rate = sf.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, ValueError, IndexError, struct.error, sf.LibsndfileError) as exc:
        raise AssetError(f"cannot read sound {path}: {exc}") from exc
    mono = audio.mean(axis=1)
    if source_rate != rate:
        g = np.gcd(int(source_rate), rate)
        mono = resample_poly(mono, rate // g, int(source_rate) // g).astype(np.float32)
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    if peak < 1e-6:
        raise AssetError(f"sound {path} is silent or empty")
    return (0.5 * mono / peak).astype(np.float32)


def tone_map(hdr: np.ndarray) -> np.ndarray:
    """HDR linear RGB -> uint8 sRGB-ish: exposure to put the median at mid-grey, Reinhard, gamma 2.2."""
    hdr = np.clip(hdr, 0, None)
    scaled = hdr * (0.18 / (np.median(hdr.mean(axis=2)) + 1e-6))
    ldr = scaled / (1 + scaled)
    return (np.clip(ldr ** (1 / 2.2), 0, 1) * 255 + 0.5).astype(np.uint8)


@lru_cache(maxsize=16)
def load_background(path: str, width: int, height: int) -> np.ndarray:
    """An equirect background as uint8 RGB [height, width, 3]. Raises :class:`AssetError`."""
    if path.startswith("procedural:"):
        return procedural_panorama(int(path.split(":")[1]), width, height)
    try:
        with av.open(path) as container:  # FFmpeg decodes OpenEXR, PNG and JPEG alike
            frame = next(container.decode(video=0))
            if frame.format.name.startswith("gbrpf"):
                rgb = tone_map(frame.to_ndarray(format="gbrpf32le"))
            else:
                rgb = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, OSError) as exc:
        raise AssetError(f"cannot read background {path}: {exc}") from exc
    import cv2

    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def procedural_panorama(seed: int, width: int, height: int) -> np.ndarray:
    """A plausible outdoor panorama: sky gradient, a hilly horizon with buildings, textured ground."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width, endpoint=False)[None, :]
    sky_top, sky_low = (
        rng.uniform([40, 80, 150], [90, 130, 220]),
        rng.uniform([170, 190, 210], [220, 230, 245]),
    )
    img = np.empty((height, width, 3), np.float32)
    img[:] = (sky_top + (sky_low - sky_top) * np.clip(y / 0.5, 0, 1)[..., None])[:, :1, :]
    # horizon: periodic in x so the seam is invisible
    ridge = 0.5 - sum(
        rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * k * x + rng.uniform(0, 6.3)) for k in (1, 3, 7)
    )
    for _ in range(rng.integers(6, 14)):
        x0, w, h = rng.uniform(0, 1), rng.uniform(0.01, 0.04), rng.uniform(0.03, 0.12)
        inside = (np.abs((x - x0 + 0.5) % 1 - 0.5) < w / 2) & (y > 0.5 - h) & (y < 0.52)
        img[inside] = rng.uniform(60, 160, 3)
    ground = rng.uniform([60, 70, 40], [120, 120, 80])
    noise = rng.normal(0, 12, (height, width, 1))
    below = (y >= ridge)[..., None]
    img = np.where(below, ground * (0.7 + 0.6 * y[..., None]) + noise, img)
    return np.clip(img, 0, 255).astype(np.uint8)


# --- the catalog -------------------------------------------------------------------------------


def build_catalog(root: str | os.PathLike | None = None, fetch: bool = True) -> Catalog:
    """Fetch (if ``fetch``) and index the real assets in the cache, filling gaps procedurally."""
    base = cache_dir(root)
    folders = {}  # package name -> its (first) kept data folder, for the packages at hand
    for package in PACKAGES:
        target = fetch_package(package, base) if fetch else _cached(package, base)
        if target is not None:
            folders[package.name] = target / package.keep[0]
    indexers = {
        "sonic-pi-samples": sonic_pi_sounds,
        "hydrogen-data": hydrogen_sounds,
        "openttd-opensfx": opensfx_sounds,
    }
    sounds = [sound for name, index in indexers.items() if name in folders for sound in index(folders[name])]
    fallbacks = []
    present = {s.label for s in sounds}
    missing = [label for label in PROCEDURAL_LABELS if label not in present]
    if missing:
        fallbacks.append(f"sounds: {', '.join(missing)}")
        sounds += [s for s in procedural_sounds() if s.label in missing]
    world = folders.get("blender-data")
    # "studio" is a featureless grey backdrop, not a scene
    backgrounds = [str(p) for p in sorted(world.glob("*.exr")) if p.stem != "studio"] if world else []
    if not backgrounds:
        fallbacks.append("backgrounds")
        backgrounds = [f"procedural:{k}" for k in range(8)]
    if fallbacks:
        log.warning("procedural stand-ins for %s", "; ".join(fallbacks))
    return Catalog(tuple(sounds), tuple(backgrounds), tuple(fallbacks))


def _cached(package: Package, root: Path) -> Path | None:
    target = root / package.name
    return target if (target / DONE_MARK).exists() else None
