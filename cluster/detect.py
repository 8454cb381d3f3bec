"""Viewpoint candidates for a clip: object directions from a detector. (Sound directions are not found
here: the loader finds the sound peaks of each training audio window itself, see
:func:`dataloading.viewpoints.sound_peaks`.)

Detectors never see equirectangular distortion: each sampled frame is resampled into undistorted
perspective (gnomonic) tiles that cover the sphere, the detector runs on every tile, and each box centre
is mapped back to (azimuth, elevation). Detections of one label closer than :data:`MERGE_RADIUS` are
merged across overlapping tiles (the highest score wins).

Built-in detectors ship with their weights (OpenCV's bundled Haar cascades and HOG people model) or need
none (motion saliency), so nothing is downloaded. ``onnx:PATH`` plugs in a user's COCO detector.
Angles are radians; times seconds; boxes tile pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import cv2
import numpy as np
import torch

from dataloading.geometry import direction_to_equirect, gnomonic_directions
from dataloading.schema import DetectedObject, direction_deg
from dataloading.viewpoints import angular_distance

MERGE_RADIUS = math.radians(12.0)
# Tiles: a ring at the horizon plus two rings toward the poles; 90° tiles overlap their neighbours.
TILE_FOV = math.radians(90.0)
TILE_RINGS = ((0.0, 8), (math.radians(55.0), 4), (math.radians(-55.0), 4))  # (elevation, tiles in ring)
TILE_SCALE = 1.0  # tile pixels per equirect pixel at the tile centre: no upsampling, no detail lost
MAX_OBJECTS = 16  # per clip, each detector's best in turn
# Detectors of upright objects (faces, cats, people: trained on eye-level photos) look only at the tiles
# within this elevation of the horizon, i.e. the horizon ring: where such objects stand around a camera,
# and where the tiles are upright. The other rings would double their cost, most of the detection's.
UPRIGHT_MAX_ELEVATION = math.radians(30.0)


@dataclass(frozen=True)
class Box:
    """A detection in tile pixels: centre (x, y), size (w, h)."""

    label: str
    score: float
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Detection:
    """A detection on the sphere at ``time`` seconds into the clip; ``size`` is its angular width."""

    label: str
    score: float
    azimuth: float
    elevation: float
    size: float
    time: float
    detector: str

    def record(self) -> DetectedObject:
        """The detection as the sample JSON records it (degrees, rounded)."""
        return DetectedObject(
            label=self.label,
            score=round(self.score, 4),
            direction=direction_deg(self.azimuth, self.elevation),
            size_deg=round(math.degrees(self.size), 2),
            time_s=round(self.time, 3),
            detector=self.detector,
        )


class Detector(Protocol):
    """Finds objects in one undistorted RGB tile. A ``motion`` detector also gets ``previous``, the same
    tile earlier in the clip, and runs on each pair of sampled frames; others run on the first frame.
    An ``upright`` detector runs only on the tiles near the horizon (:data:`UPRIGHT_MAX_ELEVATION`)."""

    name: str
    motion: bool
    upright: bool

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]: ...


# ----- geometry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """A pinhole camera looking at (azimuth, elevation) with a square ``size``-pixel image of ``fov``
    (radians); the geometry is :mod:`dataloading.geometry`'s, the same as the training crops'."""

    azimuth: float
    elevation: float
    fov: float
    size: int

    @cached_property
    def directions(self) -> tuple[np.ndarray, np.ndarray]:
        """(azimuth, elevation) in radians seen by each pixel centre, each ``[size, size]``."""
        az, el = gnomonic_directions(self.azimuth, self.elevation, self.fov, self.size, self.size)
        return az.double().numpy(), el.double().numpy()

    def angles(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(azimuth, elevation) in radians at tile points (x, y) in pixel-edge coordinates (the pixel
        holding each point: half a pixel, under 0.4° for the default tiles, is far below box accuracy)."""
        col = np.clip(np.floor(x), 0, self.size - 1).astype(int)
        row = np.clip(np.floor(y), 0, self.size - 1).astype(int)
        az, el = self.directions
        return az[row, col], el[row, col]

    def remap(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 source maps for ``cv2.remap`` (pixel-centre coordinates) from a ``width``×``height``
        equirect image; columns wrap across the ±180° seam."""
        x, y = direction_to_equirect(*(torch.from_numpy(d) for d in self.directions))
        map_x = (x.numpy() * width - 0.5) % width
        map_y = y.numpy() * height - 0.5
        return map_x.astype(np.float32), map_y.astype(np.float32)


def tiles_for(width: int) -> list[Tile]:
    """Tiles covering the sphere for an equirect ``width`` pixels wide."""
    size = max(64, round(width * TILE_FOV / (2 * math.pi) * TILE_SCALE / 8) * 8)
    return [
        Tile(2 * math.pi * k / count - math.pi, elevation, TILE_FOV, size)
        for elevation, count in TILE_RINGS
        for k in range(count)
    ]


# ----- detectors -------------------------------------------------------------------------------------
# The face cascade finds faces from ~32 pixels across (scikit-image's astronaut, scaled): 11° of a
# 256-pixel 90° tile, a face (~20 cm) about 1 m from the camera. In the 128-pixel tiles of the default
# 512-pixel equirect such a face must be within ~0.5 m; there the two cascades cost ~0.2 CPU-s per clip,
# most of the detection, and found none of the 57 objects (astronauts and cats among them) of the
# synthetic preprocessing benchmark.
HAAR_MIN_TILE = 256  # pixels


class HaarDetector:
    """An OpenCV bundled Haar cascade (faces, cat faces); score = the cascade's final stage weight.
    Runs on tiles of :data:`HAAR_MIN_TILE` pixels and more."""

    def __init__(self, label: str, cascade: str, min_neighbors: int = 5) -> None:
        self.name = f"haar_{label}"
        self.motion = False
        self.upright = True
        self.label = label
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, cascade))
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV cascade {cascade} not found under {cv2.data.haarcascades}")
        self.min_neighbors = min_neighbors

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        if tile.shape[0] < HAAR_MIN_TILE:
            return []
        gray = cv2.equalizeHist(cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY))
        rects, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(20, 20), outputRejectLevels=True
        )
        return [
            Box(self.label, float(s), x + w / 2, y + h / 2, w, h)
            for (x, y, w, h), s in zip(rects, np.ravel(weights), strict=True)
        ]


class HogPeopleDetector:
    """OpenCV's bundled HOG + linear SVM pedestrian model; score = the SVM margin."""

    name = "hog_person"
    motion = False
    upright = True

    def __init__(self, min_score: float = 0.5) -> None:
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_score = min_score

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        if tile.shape[0] < 128:  # the model's window is 64×128
            return []
        rects, weights = self.hog.detectMultiScale(tile, winStride=(8, 8), padding=(8, 8), scale=1.1)
        return [
            Box("person", float(s), x + w / 2, y + h / 2, w, h)
            for (x, y, w, h), s in zip(rects, np.ravel(weights), strict=True)
            if s >= self.min_score
        ]


def _blobs(saliency: np.ndarray, label: str, threshold: float, min_area: float, kernel: int = 9) -> list[Box]:
    """Boxes around connected regions of ``saliency`` above ``threshold``; score = mean saliency inside.

    ``kernel`` (pixels) is the closing that joins an object's broken response (edges, texture) into one blob.
    """
    mask = (saliency > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    boxes = []
    for k in range(1, count):
        x, y, w, h, area = stats[k]
        if area >= min_area * mask.size:
            score = float(saliency[labels == k].mean())
            boxes.append(Box(label, score, float(x + w / 2), float(y + h / 2), float(w), float(h)))
    return boxes


class SpectralSaliency:
    """Static saliency by the spectral residual (Hou & Zhang, CVPR 2007): what stands out from the
    average 1/f spectrum of natural images. Score = mean saliency in the region, in [0, 1]. No weights."""

    name = "saliency"
    motion = False
    upright = False

    def __init__(self, work_size: int = 64, min_area: float = 0.004) -> None:
        self.work_size = work_size  # the method works at coarse scale; 64 px is the paper's choice
        self.min_area = min_area  # fraction of the tile

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        gray = cv2.resize(
            cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY),
            (self.work_size, self.work_size),
            interpolation=cv2.INTER_AREA,
        )
        spectrum = np.fft.fft2(gray.astype(np.float64))
        log_amp = np.log(np.abs(spectrum) + 1e-9)
        residual = log_amp - cv2.blur(log_amp, (3, 3))
        saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
        saliency = cv2.GaussianBlur(saliency, (0, 0), 2.5)
        saliency = (saliency / max(saliency.max(), 1e-12)).astype(np.float32)
        threshold = max(0.25, float(saliency.mean() + 3 * saliency.std()))
        scale = tile.shape[1] / self.work_size  # blobs at the working size, boxes in tile pixels
        return [
            Box(
                b.label,
                b.score,
                (b.x + 0.5) * scale - 0.5,
                (b.y + 0.5) * scale - 0.5,
                b.w * scale,
                b.h * scale,
            )
            for b in _blobs(saliency, "salient", threshold, self.min_area, kernel=3)
        ]


class MotionSaliency:
    """Regions that changed between two frames of the clip (the camera is static in 360° footage).

    Score = mean absolute change in the region / 255. Needs no weights.
    """

    name = "motion"
    motion = True
    upright = False

    def __init__(self, min_change: float = 12.0, min_area: float = 0.002) -> None:
        self.min_change = min_change  # grey levels
        self.min_area = min_area  # fraction of the tile

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        a, b = (cv2.GaussianBlur(cv2.cvtColor(t, cv2.COLOR_RGB2GRAY), (5, 5), 0) for t in (tile, previous))
        diff = cv2.absdiff(a, b).astype(np.float32) / 255.0
        threshold = max(self.min_change / 255.0, float(diff.mean() + 3 * diff.std()))
        return _blobs(diff, "motion", threshold, self.min_area)


class OnnxDetector:
    """A user's ONNX detector (``--detector onnx:PATH``), e.g. a COCO model exported with NMS.

    Contract: one input, float32 ``[1, 3, H, W]`` RGB in [0, 1] (H, W from the model, else the tile);
    one output ``[N, 6]`` or ``[1, N, 6]`` rows of (x1, y1, x2, y2, score, class id) in input pixels.
    Class ids are reported as ``class_<id>`` (or the model's ``names`` metadata if present).
    """

    def __init__(self, path: str, min_score: float = 0.3) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeError(
                "--detector onnx:PATH needs the onnxruntime package (pip install onnxruntime)"
            ) from exc
        if not os.path.exists(path):
            raise RuntimeError(f"ONNX detector not found: {path}")
        self.name = f"onnx:{os.path.basename(path)}"
        self.motion = False
        self.upright = False  # a general (COCO) detector: every tile
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # actors scale across cores
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        names = self.session.get_modelmeta().custom_metadata_map.get("names", "")
        self.names = dict(enumerate(n.strip(" '\"{}") for n in names.split(","))) if names else {}
        self.min_score = min_score

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        shape = self.input.shape
        h, w = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else tile.shape[:2]
        image = cv2.resize(tile, (w, h)) if (h, w) != tile.shape[:2] else tile
        blob = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        rows = np.asarray(self.session.run(None, {self.input.name: blob})[0]).reshape(-1, 6)
        sx, sy = tile.shape[1] / w, tile.shape[0] / h
        return [
            Box(
                self.names.get(int(c), f"class_{int(c)}"),
                float(s),
                (x1 + x2) / 2 * sx,
                (y1 + y2) / 2 * sy,
                (x2 - x1) * sx,
                (y2 - y1) * sy,
            )
            for x1, y1, x2, y2, s, c in rows
            if s >= self.min_score
        ]


def builtin_detectors() -> list[Detector]:
    """The detectors that need no download: saliency and motion always; faces, cat faces and people
    where the installed OpenCV still bundles them (4.x; OpenCV 5 moved Haar and HOG to contrib)."""
    found: list[Detector] = [SpectralSaliency(), MotionSaliency()]
    if hasattr(cv2, "CascadeClassifier") and getattr(cv2, "data", None) is not None:
        for label, cascade in (
            ("face", "haarcascade_frontalface_default.xml"),
            ("cat", "haarcascade_frontalcatface_extended.xml"),
        ):
            if os.path.exists(os.path.join(cv2.data.haarcascades, cascade)):
                found.append(HaarDetector(label, cascade))
    if hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
        found.append(HogPeopleDetector())
    return found


def make_detectors(spec: str) -> list[Detector]:
    """Detectors for ``--detector``: "builtin", "none" or "onnx:PATH"."""
    if spec == "none":
        return []
    if spec == "builtin":
        return builtin_detectors()
    if spec.startswith("onnx:"):
        return [OnnxDetector(spec.removeprefix("onnx:"))]
    raise ValueError(f"unknown detector {spec!r}; use builtin, none or onnx:PATH")


# ----- running them ----------------------------------------------------------------------------------
class ObjectFinder:
    """Runs detectors over the perspective tiles of sampled frames and merges their detections."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = list(detectors)
        self._maps: dict[tuple[int, int], list[tuple[Tile, np.ndarray, np.ndarray]]] = {}

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.detectors) or "none"

    def _tiles(self, width: int, height: int) -> list[tuple[Tile, np.ndarray, np.ndarray]]:
        if (width, height) not in self._maps:  # same size for every clip of a run: build once
            self._maps[(width, height)] = [(t, *t.remap(width, height)) for t in tiles_for(width)]
        return self._maps[(width, height)]

    def find(self, frames: Sequence[tuple[float, np.ndarray]]) -> list[Detection]:
        """Detections in RGB equirect ``frames`` given as (time in seconds, uint8 [H, W, 3]): at most
        :data:`MAX_OBJECTS`, each detector's best in turn (see :func:`take_in_turn`).

        Still-image detectors look at the first frame; motion detectors at each pair of consecutive frames.
        """
        if not self.detectors or not frames:
            return []
        height, width = frames[0][1].shape[:2]
        found: list[Detection] = []
        for tile, map_x, map_y in self._tiles(width, height):
            views = [
                cv2.remap(f, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                for _, f in frames
            ]
            hits: list[tuple[Box, float, str]] = []
            for detector in self.detectors:
                if detector.upright and abs(tile.elevation) > UPRIGHT_MAX_ELEVATION:
                    continue
                if detector.motion:
                    for k in range(1, len(views)):
                        hits += [
                            (b, frames[k][0], detector.name) for b in detector.detect(views[k], views[k - 1])
                        ]
                else:
                    hits += [(b, frames[0][0], detector.name) for b in detector.detect(views[0], None)]
            if not hits:
                continue
            az, el = tile.angles(np.array([h[0].x for h in hits]), np.array([h[0].y for h in hits]))
            half = math.tan(tile.fov / 2) / tile.size
            for (box, time, name), a, e in zip(hits, az, el, strict=True):
                size = 2 * math.atan(box.w * half)
                found.append(Detection(box.label, box.score, float(a), float(e), size, time, name))
        return take_in_turn(merge(found), MAX_OBJECTS)


def merge(detections: list[Detection], radius: float = MERGE_RADIUS) -> list[Detection]:
    """Greedy spherical non-maximum suppression per label: keep the best within ``radius`` radians."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(
            k.label != d.label or angular_distance(k.azimuth, k.elevation, d.azimuth, d.elevation) > radius
            for k in kept
        ):
            kept.append(d)
    return kept


def take_in_turn(detections: list[Detection], limit: int) -> list[Detection]:
    """The first ``limit`` of ``detections`` (best first) taking each detector's next best in turn.

    Scores of different detectors are not comparable (a saliency score is a mean saliency, a motion
    score a mean grey-level change / 255), so one cut by score would let one detector crowd out the rest.
    """
    queues: dict[str, list[Detection]] = {}
    for d in detections:
        queues.setdefault(d.detector, []).append(d)
    taken: list[Detection] = []
    for rank in range(max(map(len, queues.values()), default=0)):
        taken += [queue[rank] for queue in queues.values() if rank < len(queue)]
    return taken[:limit]
