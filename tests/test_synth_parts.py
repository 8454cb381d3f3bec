"""Unit tests of the generator's parts: FOA conventions of the room renderer, equirect sprite
geometry at the seam and poles, evaluation sets and their splits, asset fetching fallbacks."""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dataloading.features import intensity_doa
from dataloading.foa import encode_plane_wave
from dataloading.synth import assets
from dataloading.synth.assets import Catalog, Package, build_catalog, fetch_package, load_sound
from dataloading.synth.evalsets import (
    classification_set,
    classification_split,
    doa_set,
    held_out_sources,
    static_source,
)
from dataloading.synth.render_video import draw_sprite, load_sprite
from dataloading.synth.scene import ROOM_FAMILIES, Room, unit_vector
from dataloading.synth.spatialize import render_source, room_impulse_response
from tests.helpers import alpha_of, angle_deg

RATE = 48000
ROOM = Room((7.0, 5.5, 3.2), 0.4, (3.3, 2.6, 1.6), "train")
DIRECTIONS_DEG = [(0, 0), (90, 0), (-90, 0), (180, 0), (0, 60), (135, -40), (-60, 20)]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog()


@pytest.mark.parametrize(("az_deg", "el_deg"), DIRECTIONS_DEG)
def test_direct_path_is_acn_sn3d_like_encode_plane_wave(az_deg: float, el_deg: float) -> None:
    """The image-source response's direct path has the gains of foa.encode_plane_wave (W, Y, Z, X
    in SN3D: +Y is left, +Z up), and amplitude 1/distance."""
    az, el, distance = np.deg2rad(az_deg), np.deg2rad(el_deg), 1.2
    rir = room_impulse_response(ROOM, np.array(ROOM.mic) + distance * unit_vector(az, el), RATE)
    peak = int(np.argmax(np.abs(rir[0])))
    expected = encode_plane_wave(torch.ones(1, dtype=torch.float64), az, el)[:, 0].numpy()
    np.testing.assert_allclose(rir[:, peak] / rir[0, peak], expected, atol=0.02)
    assert rir[0, peak] == pytest.approx(1 / distance, rel=0.15)  # fractional-delay spread


@pytest.mark.parametrize(("az_deg", "el_deg"), DIRECTIONS_DEG)
def test_noise_source_in_a_reverberant_room_is_localised_within_10_degrees(
    az_deg: float, el_deg: float
) -> None:
    az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
    source = static_source(0, None, az, el, 1.5, [(0.0, 1.0)])
    dry = np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
    foa = render_source(source, dry, ROOM, RATE, seed=0)
    est_az, est_el = intensity_doa(torch.from_numpy(foa))
    assert angle_deg(float(est_az), float(est_el), az, el) < 10


def sprite_centroid(alpha: np.ndarray) -> tuple[float, float]:
    """Alpha- and area-weighted mean direction (radians) of an equirect mask."""
    height, width = alpha.shape
    phi = (1 - 2 * (np.arange(width) + 0.5) / width) * np.pi
    nu = (1 - 2 * (np.arange(height) + 0.5) / height) * np.pi / 2
    phi, nu = np.meshgrid(phi, nu)
    mean = (unit_vector(phi, nu) * (alpha * np.cos(nu))[..., None]).sum(axis=(0, 1))
    return float(np.arctan2(mean[1], mean[0])), float(np.arctan2(mean[2], np.hypot(mean[0], mean[1])))


SPRITE_DIRECTIONS_DEG = [(0, 0), (90, 10), (179, 0), (-178, 5), (30, 72), (-120, -75)]


@pytest.mark.parametrize(("az_deg", "el_deg"), SPRITE_DIRECTIONS_DEG)
def test_sprites_land_at_their_direction_even_across_the_seam_and_near_poles(
    az_deg: float, el_deg: float
) -> None:
    """A point-symmetric sprite's mask, mapped by inverse gnomonic projection, is centred on its
    direction (the centroid of a point-symmetric tangent-plane shape is its tangent point)."""
    az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
    alpha, _ = alpha_of(load_sprite("astronaut"), az, el, np.deg2rad(30))
    assert alpha.sum() > 50
    got_az, got_el = sprite_centroid(alpha)
    assert angle_deg(got_az, got_el, az, el) < 1.0


def test_image_left_is_positive_azimuth_and_sprites_are_upright() -> None:
    frame = np.zeros((128, 256, 3), np.uint8)
    sprite = np.zeros((20, 20, 4), np.float32)
    sprite[:10, :10] = (1, 0, 0, 1)  # red top-left quadrant
    sprite[10:, 10:] = (0, 0, 1, 1)  # blue bottom-right quadrant
    draw_sprite(frame, sprite, np.pi / 2, 0.0, np.deg2rad(20))  # facing left (+Y)
    cols = np.nonzero(frame.any(axis=(0, 2)))[0]
    assert abs(cols.mean() - 64) < 2  # x = 0.25
    red, blue = np.argwhere(frame[..., 0] > 200), np.argwhere(frame[..., 2] > 200)
    assert red[:, 0].mean() < blue[:, 0].mean() and red[:, 1].mean() < blue[:, 1].mean()


def test_seam_wraps_instead_of_clipping() -> None:
    frame = np.zeros((64, 128, 3), np.uint8)
    draw_sprite(frame, np.ones((10, 10, 4), np.float32), np.pi, 0.0, np.deg2rad(20))
    assert frame[32, 0].any() and frame[32, -1].any() and not frame[32, 64].any()


def test_held_out_sources_are_disjoint_from_training_and_leave_every_class_trainable(
    catalog: Catalog,
) -> None:
    held = held_out_sources(catalog)
    split = classification_split(catalog)
    assert len(split) >= 3
    for label, parts in split.items():
        train, test = {a.source for a in parts["train"]}, {a.source for a in parts["test"]}
        assert train and test and not train & test, label
        assert test <= held and not train & held


def read_shards(folder: Path, shards: list[dict]) -> list[tuple[str, dict]]:
    samples = []
    for shard in shards:
        with tarfile.open(folder / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.rsplit(".", 1)[0] for name in members})
        for key in keys:
            audio, rate = sf.read(io.BytesIO(members[f"{key}.flac"]))
            samples.append((key, {"audio": audio, "rate": rate, "meta": json.loads(members[f"{key}.json"])}))
    return samples


def test_classification_set_test_split_uses_unseen_sources_and_rooms(
    tmp_path: Path, catalog: Catalog
) -> None:
    manifest = classification_set(
        str(tmp_path), catalog, clips_per_class=2, seed=0, seconds=1.0, progress=False
    )
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert not set(train["sources"]) & set(test["sources"])
    assert (train["room_family"], test["room_family"]) == ("train", "eval")
    for part in (train, test):
        samples = read_shards(tmp_path, part["shards"])
        assert len(samples) == part["samples"] > 0
        for _, sample in samples:
            assert sample["audio"].shape == (24000, 4) and sample["rate"] == 24000
            meta = sample["meta"]
            assert meta["sound_source"] in part["sources"]
            assert manifest["classes"][meta["label_index"]] == meta["label"]


def test_doa_set_has_a_head_training_and_a_test_split_in_rooms_of_their_own(
    tmp_path: Path, catalog: Catalog
) -> None:
    manifest = doa_set(str(tmp_path), catalog, clips=3, seed=0, seconds=1.0, progress=False)
    families = {}
    for part in ("train", "test"):
        samples = read_shards(tmp_path, manifest["splits"][part]["shards"])
        assert len(samples) == 3 == manifest["splits"][part]["samples"]
        for _, sample in samples:
            meta = sample["meta"]
            families.setdefault(part, set()).add(meta["room"]["family"])
            (source,) = meta["sources"]
            assert -180 <= source["azimuth_deg"] <= 180 and -90 <= source["elevation_deg"] <= 90
            dims, rt60 = np.array(meta["room"]["dims_m"]), meta["room"]["rt60_s"]
            low, high, (rt_low, rt_high) = ROOM_FAMILIES[meta["room"]["family"]]
            assert (dims >= low).all() and (dims <= high).all() and rt_low <= rt60 <= rt_high
    # Head training in probe rooms, test in evaluation rooms, pretraining in neither.
    assert families == {"train": {"probe"}, "test": {"eval"}}


def test_room_families_do_not_overlap() -> None:
    ranges = sorted(ROOM_FAMILIES.values(), key=lambda r: r[2])
    for (_, high, (_, rt_high)), (low, _, (rt_low, _)) in itertools.pairwise(ranges):
        assert rt_high <= rt_low and max(high) <= max(low)


def test_same_seed_same_eval_shards(tmp_path: Path, catalog: Catalog) -> None:
    first = doa_set(str(tmp_path / "a"), catalog, clips=2, seed=5, seconds=0.5, progress=False)
    second = doa_set(str(tmp_path / "b"), catalog, clips=2, seed=5, seconds=0.5, progress=False)
    assert first["splits"] == second["splits"]  # shard sha256 included


def test_corrupt_recordings_are_rejected_from_eval_sets(tmp_path: Path, catalog: Catalog) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF garbage")
    label, held = next(iter(classification_split(catalog))), held_out_sources(catalog)
    sounds = tuple(
        replace(s, path=str(corrupt)) if s.label == label and s.source in held else s for s in catalog.sounds
    )
    bad = Catalog(sounds, catalog.backgrounds)
    manifest = classification_set(str(tmp_path / "cls"), bad, 1, 0, seconds=0.5, progress=False)
    assert manifest["rejected"] and manifest["rejected"][0]["path"] == str(corrupt)


def test_without_apt_the_generator_falls_back_to_procedural_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(assets.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING):
        catalog = build_catalog(tmp_path / "empty")
    assert "apt-get/dpkg-deb not found" in caplog.text and "procedural" in caplog.text
    assert set(catalog.fallbacks) and catalog.backgrounds[0].startswith("procedural:")
    assert set(assets.PROCEDURAL_LABELS) <= set(catalog.labels())
    assert len(classification_split(catalog)) >= 3  # procedural variants are distinct sources
    assert load_sound(catalog.sounds[0].path, 24000).std() > 0
    assert assets.load_background(catalog.backgrounds[0], 64, 32).shape == (32, 64, 3)


def test_a_failed_apt_download_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert fetch_package(Package("avsa-no-such-package", ()), tmp_path) is None
    assert "apt-get download avsa-no-such-package failed" in caplog.text


def test_each_scene_turns_its_panorama_by_its_own_yaw(catalog: Catalog) -> None:
    """A crop's place in a fixed panorama would give the scene (and the direction) away: every scene turns
    its background by a random yaw, positive toward the left like azimuth."""
    from dataloading.synth.render_video import render_frames
    from dataloading.synth.scene import sample_scene

    scenes = [sample_scene(seed, 1.0, catalog) for seed in range(40)]
    yaws = np.array([s.background_yaw for s in scenes])
    assert (np.abs(yaws) <= np.pi).all() and yaws.std() > 1.0  # spread over the circle
    scene = replace(scenes[0], sources=[], background_yaw=np.pi / 2)
    background = assets.load_background("procedural:3", 64, 32)
    (frame,) = list(render_frames(scene, background, fps=1))
    # Azimuth φ sits at column (1 − φ/π)/2 · width: the content at φ = 0 (column 32) is now at φ = 90°.
    np.testing.assert_array_equal(frame[:, 16], background[:, 32])


@pytest.mark.parametrize("seconds", [2.0, 4.0, 60.0])
def test_sounds_of_short_and_long_scenes_start_early_and_are_heard_for_most_of_a_short_one(
    seconds: float,
) -> None:
    from dataloading.synth.scene import sample_events

    for seed in range(200):
        events = sample_events(np.random.default_rng(seed), seconds)
        assert events, f"seed {seed}: a sound of a {seconds:g}-s scene never starts"
        assert events[0][0] <= min(2.0, seconds / 4)
        assert all(0 <= on < off <= seconds for on, off in events)
        if seconds <= 2:  # the shortest event (1.5 s) outlasts the scene: on from its onset to the end
            assert sum(off - on for on, off in events) >= 0.75 * seconds - 1e-9
