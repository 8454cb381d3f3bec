"""Equirectangular frames of a scene and the H.264 + 4-channel AAC mp4 (or m4a) that carries them.

Sprites are flat pictures facing the camera. Each equirect pixel near a sprite is mapped back
onto the sprite's plane by the inverse gnomonic projection, so objects bend correctly near
the poles and wrap across the seam at azimuth ±180°. Pixel convention: x, y ∈ [0, 1],
φ = (1−2x)π, ν = (1−2y)π/2; image centre = front, image left = positive azimuth.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np
import skimage

from dataloading.synth.scene import OBJECT_CLASSES, Scene, Source

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SKIMAGE_SPRITES = {  # sprite name -> file shipped with scikit-image (real photos)
    "horse": "horse.png",
    "rocket": "rocket.jpg",
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "clock_motion": "clock_motion.png",
    "motorcycle_left": "motorcycle_left.png",
}
AUDIO_BITRATE = 512_000  # bits/s for 4 channels: transparent enough to keep the spatial cues


def soft_ellipse(height: int, width: int, feather: float = 0.08) -> np.ndarray:
    """An alpha mask [H, W] in [0, 1]: a rounded cut-out, so a photo reads as an object, not a card."""
    y, x = np.mgrid[0:height, 0:width]
    r = np.hypot((x + 0.5) / width * 2 - 1, (y + 0.5) / height * 2 - 1)
    return np.clip((1 - r) / feather, 0, 1)


def procedural_sprite(name: str) -> np.ndarray:
    """Drawn objects: a drum (side view) and a concrete pillar. RGBA float32 in [0, 1]."""
    if name == "pillar":
        h, w = 400, 40
        shade = 0.35 + 0.3 * np.sin(np.linspace(0.2, np.pi - 0.2, w))[None, :]  # a round column, lit
        rgb = np.repeat(shade[..., None], 3, axis=2) * np.array([1.0, 0.97, 0.9])
        rgb = np.broadcast_to(rgb, (h, w, 3)) + np.random.default_rng(7).normal(0, 0.02, (h, w, 3))
        return np.dstack([np.clip(rgb, 0, 1), np.ones((h, w))]).astype(np.float32)
    if name == "drum":
        h, w = 240, 300
        img = np.zeros((h, w, 4), np.float32)
        cv2.rectangle(img, (20, 60), (280, 200), (0.75, 0.1, 0.1, 1.0), -1)  # red shell
        for x in range(40, 280, 40):  # tension rods
            cv2.line(img, (x, 60), (x - 20, 200), (0.9, 0.85, 0.6, 1.0), 3)
        cv2.ellipse(img, (150, 60), (130, 40), 0, 0, 360, (0.95, 0.93, 0.88, 1.0), -1)  # head
        cv2.ellipse(img, (150, 200), (130, 40), 0, 0, 180, (0.6, 0.08, 0.08, 1.0), -1)
        return img
    raise KeyError(name)


@lru_cache(maxsize=32)
def load_sprite(name: str) -> np.ndarray:
    """A sprite as RGBA float32 [H, W, 4] in [0, 1]."""
    if name not in SKIMAGE_SPRITES:
        return procedural_sprite(name)
    img = skimage.io.imread(SKIMAGE_DATA / SKIMAGE_SPRITES[name]).astype(np.float32) / 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if name == "horse":  # a black silhouette on white: keep the shape, give it a horse's coat
        alpha = np.clip((0.6 - img[..., :3].mean(axis=2)) / 0.3, 0, 1)
        y = np.linspace(0, 1, img.shape[0])[:, None, None]
        coat = np.array([0.45, 0.28, 0.15]) * (1.1 - 0.4 * y)
        return np.dstack([np.broadcast_to(coat, (*img.shape[:2], 3)), alpha]).astype(np.float32)
    return np.dstack([img[..., :3], soft_ellipse(*img.shape[:2])]).astype(np.float32)


def sprite_region(
    width: int, height: int, az: float, el: float, radius: float
) -> tuple[slice, slice | np.ndarray]:
    """Rows (a slice) and columns (a slice, or indices where the region wraps across the seam)
    of the equirect pixels within ``radius`` radians of (az, el)."""
    top = max(0, int(np.floor((0.5 - (el + radius) / np.pi) * height)) - 1)
    bottom = min(height, int(np.ceil((0.5 - (el - radius) / np.pi) * height)) + 1)
    if abs(el) + radius >= np.pi / 2 - 1e-6:  # the cap holds a pole: every longitude
        return slice(top, bottom), slice(0, width)
    spread = np.arcsin(min(1.0, np.sin(radius) / np.cos(el)))
    left = int(np.floor((0.5 - (az + spread) / (2 * np.pi)) * width)) - 1
    right = int(np.ceil((0.5 - (az - spread) / (2 * np.pi)) * width)) + 1
    if right - left >= width:
        return slice(top, bottom), slice(0, width)
    if left >= 0 and right <= width:
        return slice(top, bottom), slice(left, right)
    return slice(top, bottom), np.arange(left, right) % width


def draw_sprite(frame: np.ndarray, sprite: np.ndarray, az: float, el: float, angular_width: float) -> None:
    """Composite ``sprite`` (RGBA float [h, w, 4]) into ``frame`` (uint8 [H, W, 3], in place),
    centred at (az, el) radians, ``angular_width`` radians wide, upright, facing the camera."""
    height, width = frame.shape[:2]
    sh, sw = sprite.shape[:2]
    tx = float(np.tan(angular_width / 2))  # python floats keep the float32 maps float32
    ty = tx * sh / sw
    rows, cols = sprite_region(width, height, az, el, float(np.arctan(np.hypot(tx, ty))))
    row_index = np.arange(rows.start, rows.stop)
    col_index = np.arange(cols.start, cols.stop) if isinstance(cols, slice) else cols
    if row_index.size == 0:
        return
    # direction cosines against the sprite's centre, right (decreasing azimuth) and up axes, from
    # separable row (elevation) and column (azimuth offset) terms: cheap per frame
    dphi = ((1 - 2 * (col_index + 0.5) / width) * np.pi - az).astype(np.float32)[None, :]
    nu = ((1 - 2 * (row_index + 0.5) / height) * np.pi / 2).astype(np.float32)[:, None]
    cos_nu, sin_nu, cos_dphi = np.cos(nu), np.sin(nu), np.cos(dphi)
    cos_el, sin_el = float(np.cos(el)), float(np.sin(el))
    # the region lies within ~60° of the centre, so depth > 0 there; the clamp only guards 0/0
    depth = np.maximum((cos_nu * cos_el) * cos_dphi + sin_nu * sin_el, 1e-3)
    u = (-cos_nu * np.sin(dphi)) / (depth * (tx * 2 / sw)) + (sw / 2 - 0.5)  # gnomonic -> sprite px
    v = ((cos_nu * sin_el) * cos_dphi - sin_nu * cos_el) / (depth * (ty * 2 / sh)) + (sh / 2 - 0.5)
    rgba = cv2.remap(sprite, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = rgba[..., 3:4]
    band = frame[rows]
    under = (band[:, cols] if isinstance(cols, slice) else band.take(cols, axis=1)).astype(np.float32)
    band[:, cols] = (under + alpha * (rgba[..., :3] * 255 - under) + 0.5).astype(np.uint8)


def sized_sprite(source: Source, frame_width: int) -> np.ndarray:
    """The source's sprite shrunk to about its on-screen pixel size (area filter), which keeps
    per-frame bilinear sampling free of aliasing."""
    sprite = load_sprite(OBJECT_CLASSES[source.object_class or ""].sprite)
    target = max(8, int(2 * frame_width * source.width / (2 * np.pi)))  # 2× oversampled
    if target >= sprite.shape[1]:
        return sprite
    h = max(4, round(sprite.shape[0] * target / sprite.shape[1]))
    return cv2.resize(sprite, (target, h), interpolation=cv2.INTER_AREA)


def render_frames(scene: Scene, background: np.ndarray, fps: int) -> Iterator[np.ndarray]:
    """uint8 RGB frames [H, W, 3]: the background turned by the scene's yaw (a positive yaw moves its
    content toward the left, as azimuth grows), with the visible sources drawn over it, far ones first."""
    width = background.shape[1]
    background = np.roll(background, -round(scene.background_yaw / (2 * np.pi) * width), axis=1)
    visible = sorted((s for s in scene.sources if s.visible), key=lambda s: -s.distance)
    sprites = [sized_sprite(s, width) for s in visible]
    for i in range(round(scene.seconds * fps)):
        frame = background.copy()
        for source, sprite in zip(visible, sprites, strict=True):
            az, el = source.direction(i / fps)
            draw_sprite(frame, sprite, float(az), float(el), source.width)
        yield frame


def _add_foa_stream(container: av.container.OutputContainer, rate: int) -> av.AudioStream:
    """A 4-channel AAC stream for FOA at ``rate`` Hz (see :func:`encode_mp4` for why these options)."""
    audio = container.add_stream("aac", rate=rate, layout="4.0")
    audio.bit_rate = AUDIO_BITRATE
    # The "fast" coder: ~3× less CPU than the default two-loop search (a quarter of a short scene's
    # synthesis), with every channel still coded on its own at this bitrate.
    audio.codec_context.options = {"aac_ms": "0", "aac_is": "0", "aac_pns": "0", "aac_coder": "fast"}
    return audio


def _mux_foa(
    container: av.container.OutputContainer, audio: av.AudioStream, foa: np.ndarray, rate: int
) -> None:
    samples = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(foa, dtype=np.float32), format="fltp", layout="4.0"
    )
    samples.sample_rate, samples.pts = rate, 0
    container.mux(audio.encode(samples))
    container.mux(audio.encode(None))


def encode_mp4(
    frames: Iterator[np.ndarray], foa: np.ndarray | None, fps: int, rate: int, size: tuple[int, int]
) -> bytes:
    """An mp4 with H.264 video (constant ``fps``, yuv420p) and 4-channel AAC FOA at ``rate`` Hz
    (``foa`` None: video only, for layouts that keep the audio in a file of its own).

    ``foa`` is [4, N] float in [-1, 1], ACN order; AAC's "4.0" layout carries the channels in
    that order through FFmpeg encode/decode. M/S, intensity stereo and noise substitution are
    off: they would trade the inter-channel relations the spatial cues live in for bitrate.
    Single-threaded encoders keep the bytes reproducible.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps), "threads": "1"}
        audio = _add_foa_stream(container, rate) if foa is not None else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None and foa is not None:
            _mux_foa(container, audio, foa, rate)
    return buf.getvalue()


def encode_m4a(foa: np.ndarray, rate: int) -> bytes:
    """An m4a holding only FOA ``[4, N]`` (ACN) as 4-channel AAC, layout "4.0", at ``rate`` Hz — how
    YT-360 stores the audio of a clip (``audio/{YTID}-{START}.m4a``)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="ipod") as container:  # "ipod" is FFmpeg's muxer for .m4a
        _mux_foa(container, _add_foa_stream(container, rate), foa, rate)
    return buf.getvalue()
