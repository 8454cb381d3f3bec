"""End-to-end tests of `avsa synth` on tiny videos: decoding, audio directions, sprite positions,
determinism, the CLI, and bad assets. Videos are generated once per module and shared."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.signal import butter, lfilter, sosfiltfilt

from cluster.cli import main
from dataloading.features import intensity_doa
from dataloading.synth.assets import Catalog, build_catalog, load_background
from dataloading.synth.evalsets import held_out_sources
from dataloading.synth.generate import SynthOptions, generate, scene_for
from dataloading.synth.render_video import render_frames, sized_sprite
from tests.helpers import alpha_of, angle_deg

SIZE = (256, 128)
FPS = 15
SECONDS = 6.0
RATE = 48000


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog()  # real assets when apt works (cached), procedural otherwise


@pytest.fixture(scope="module")
def opts(tmp_path_factory: pytest.TempPathFactory) -> SynthOptions:
    out = tmp_path_factory.mktemp("synth") / "a"
    # sources take turns, so each one's direction can be measured alone
    return SynthOptions(
        out=str(out), videos=2, seconds=SECONDS, seed=3, workers=2, size=SIZE, fps=FPS, one_at_a_time=True
    )


@pytest.fixture(scope="module")
def generated(opts: SynthOptions, catalog: Catalog) -> dict:
    return generate(opts, catalog, progress=False)


def decode(path: Path) -> tuple[av.container.InputContainer, list[np.ndarray], np.ndarray]:
    container = av.open(str(path))
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    container.seek(0)
    audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return container, frames, audio


def truth(opts: SynthOptions, index: int) -> dict:
    return json.loads((Path(opts.out) / f"video_{index:05d}.json").read_text())


def test_mp4s_decode_with_right_size_fps_duration_and_4ch_48k(opts: SynthOptions, generated: dict) -> None:
    assert generated["failed"] == []
    for index in range(opts.videos):
        container, frames, audio = decode(Path(opts.out) / f"video_{index:05d}.mp4")
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and sound.codec_context.name == "aac"
        assert (video.codec_context.width, video.codec_context.height) == SIZE
        assert video.average_rate == FPS and len(frames) == SECONDS * FPS
        assert sound.codec_context.channels == 4 and sound.rate == RATE
        assert abs(audio.shape[1] / RATE - SECONDS) < 0.05
        assert frames[0].shape == (SIZE[1], SIZE[0], 3)


def test_visible_sources_are_heard_from_their_ground_truth_direction(
    opts: SynthOptions, generated: dict
) -> None:
    """Intensity-vector DOA of the decoded FOA over each event of each visible source (sources take
    turns) is within 10° of the ground truth at the event's middle, in a reverberant room. The
    same band-pass (300 Hz–8 kHz) and pre-emphasis go on all four channels — a linear filter
    common to all channels leaves directions unchanged — so that the few low-frequency bins
    where room modes dominate do not outweigh the rest."""
    sos = butter(4, [300, 8000], btype="band", fs=RATE, output="sos")
    errors = []
    for index in range(opts.videos):
        gt = truth(opts, index)
        assert gt["room"]["rt60_s"] >= 0.25  # reverberant
        _, _, audio = decode(Path(opts.out) / f"video_{index:05d}.mp4")
        audio = lfilter([1, -0.97], [1], sosfiltfilt(sos, audio, axis=1), axis=1)
        for source in gt["sources"]:
            if source["kind"] != "visible":
                continue
            assert source["active"], "a visible sounding source with no events"
            track = np.array(source["trajectory"])
            for on, off in source["active"]:
                segment = torch.from_numpy(np.ascontiguousarray(audio[:, int(on * RATE) : int(off * RATE)]))
                az, el = intensity_doa(segment)
                mid = (on + off) / 2
                true_az = np.interp(mid, track[:, 0], np.unwrap(np.deg2rad(track[:, 1])))
                true_el = np.deg2rad(np.interp(mid, track[:, 0], track[:, 2]))
                errors.append(angle_deg(float(az), float(el), true_az, true_el))
    assert len(errors) >= 3
    assert max(errors) < 10.0, errors


def pixel_of(az: float, el: float) -> tuple[int, int]:
    """(row, col) of the equirect pixel holding direction (az, el) radians."""
    x, y = (1 - az / np.pi) / 2, (1 - 2 * el / np.pi) / 2
    return min(SIZE[1] - 1, int(y * SIZE[1])), int(x * SIZE[0]) % SIZE[0]


def test_sprites_are_drawn_at_their_ground_truth_direction(
    opts: SynthOptions, generated: dict, catalog: Catalog
) -> None:
    """In the decoded video, the pixels at each visible object's ground-truth direction show that
    object (unless a nearer one covers them); the decoded frames match the exact renders."""
    checked = 0
    for index in range(opts.videos):
        gt = truth(opts, index)
        scene = scene_for(index, opts, catalog, frozenset(held_out_sources(catalog)))
        _, frames, _ = decode(Path(opts.out) / f"video_{index:05d}.mp4")
        exact = list(render_frames(scene, load_background(scene.background, *SIZE), FPS))
        assert np.abs(frames[30].astype(float) - exact[30]).mean() < 6  # H.264 at CRF 23
        for i in (0, 30, 75):
            t = i / FPS
            drawn = []
            for source in sorted(scene.sources, key=lambda s: s.distance):  # nearest first
                if not source.visible:
                    continue
                sample = next(p for p in gt["sources"][source.id]["trajectory"] if abs(p[0] - t) < 1e-6)
                az, el = np.deg2rad(sample[1]), np.deg2rad(sample[2])
                sprite = sized_sprite(source, SIZE[0])
                alpha, colour = alpha_of(
                    sprite, az, el, np.deg2rad(gt["sources"][source.id]["angular_width_deg"])
                )
                row, col = pixel_of(az, el)
                assert alpha[row, col] > 0.9, (source.object_class, alpha[row, col])
                covered = any(a[row, col] > 0.05 for a in drawn)
                drawn.append(alpha)
                if covered or source.kind == "occluder":
                    continue
                patch = (slice(max(0, row - 1), row + 2), slice(max(0, col - 1), col + 2))
                seen, expected = frames[i][patch].astype(float), colour[patch].astype(float)
                assert np.abs(seen - expected).mean() < 40, (
                    source.object_class,
                    seen.mean(),
                    expected.mean(),
                )
                checked += 1
    assert checked >= 6


def test_same_seed_same_bytes_whatever_the_workers(
    opts: SynthOptions, generated: dict, catalog: Catalog
) -> None:
    again = replace(opts, out=str(Path(opts.out).parent / "b"), workers=1)
    generate(again, catalog, progress=False)
    for index in range(opts.videos):
        for ext in ("mp4", "json"):
            name = f"video_{index:05d}.{ext}"
            assert (Path(opts.out) / name).read_bytes() == (Path(again.out) / name).read_bytes(), name


def test_different_seeds_give_different_scenes(opts: SynthOptions, catalog: Catalog) -> None:
    scenes = [scene_for(0, replace(opts, seed=seed), catalog, frozenset()) for seed in range(6)]
    signatures = {
        (s.room, s.background, tuple((x.object_class, round(x.azimuth, 6)) for x in s.sources))
        for s in scenes
    }
    assert len(signatures) == len(scenes)


def test_training_videos_never_use_held_out_recordings(
    opts: SynthOptions, generated: dict, catalog: Catalog
) -> None:
    held = held_out_sources(catalog)
    used = {
        s["sound_source"] for i in range(opts.videos) for s in truth(opts, i)["sources"] if s["sound_source"]
    }
    assert used and not used & held


def test_bad_assets_are_reported_and_skipped(tmp_path: Path, catalog: Catalog) -> None:
    """Corrupt and missing sounds and a corrupt background: the video is made without them and
    the run summary and ground truth say what was skipped and why."""
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    broken_picture = tmp_path / "broken.exr"
    broken_picture.write_bytes(b"\x76\x2f\x31\x01 not really an EXR")
    sounds = tuple(
        replace(s, path=str(corrupt) if k % 2 else str(tmp_path / "missing.wav"))
        for k, s in enumerate(catalog.sounds)
    )
    bad = Catalog(sounds, (str(broken_picture),))
    opts = SynthOptions(
        out=str(tmp_path / "out"), videos=1, seconds=2.0, seed=1, workers=1, size=(128, 64), fps=10
    )
    summary = generate(opts, bad, progress=False)
    assert summary["failed"] == []
    skipped = summary["videos"][0]["skipped"]
    assert {s["path"] for s in skipped} >= {str(broken_picture)}
    assert any("missing.wav" in s["path"] or "corrupt.flac" in s["path"] for s in skipped)
    assert all(s["reason"] for s in skipped)
    gt = json.loads((tmp_path / "out" / "video_00000.json").read_text())
    assert gt["skipped_assets"] == skipped
    assert all(s["sound_file"] is None for s in gt["sources"])  # every sound was bad: none is claimed
    assert (tmp_path / "out" / "video_00000.mp4").stat().st_size > 0


def test_cli_writes_videos_and_eval_sets(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = [
        "synth",
        "--out",
        str(out),
        "--videos",
        "1",
        "--seconds",
        "1",
        "--size",
        "128x64",
        "--fps",
        "10",
        "--workers",
        "1",
        "--eval-sets",
        "--eval-clips",
        "1",
    ]
    assert main(args) == 0
    assert (out / "video_00000.mp4").exists() and (out / "video_00000.json").exists()
    summary = json.loads((out / "synth.json").read_text())
    assert summary["options"]["videos"] == 1 and summary["failed"] == []
    for kind in ("classification", "doa"):
        manifest = json.loads((out / "eval" / kind / "manifest.json").read_text())
        assert manifest["kind"] == kind and manifest["splits"]["test"]["samples"] > 0


def test_cli_rejects_sizes_that_are_not_2_to_1(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "--out", "x", "--size", "1000x600"])
    assert "2:1" in capsys.readouterr().err
