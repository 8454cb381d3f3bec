"""`avsa preprocess --layout starss23|yt360` on trees written by `avsa synth --layout`, on a real Ray head:
labels and splits in the sample JSON equal the generator's, the azimuth convention survives (a source at
+90° is on the left of the panorama and in front once the FOA is steered to +90°), and every file of a
tree that cannot be used is in the manifest with its reason."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from cluster.preprocess import run
from dataloading.config import PreprocessConfig
from dataloading.dcase import CLASSES, FRAME_SECONDS
from dataloading.foa import mono_decode, steer
from dataloading.layouts import MIC_REFUSED, STARSS_STEM, Layout
from dataloading.synth.assets import Catalog, build_catalog, load_background
from dataloading.synth.evalsets import held_out_sources
from dataloading.synth.generate import SynthOptions, generate, layout_files, render, scene_for
from dataloading.synth.scene import Scene, Source, ground_truth, sample_room
from dataloading.synth.trees import STARSS_CLASS_OF_LABEL, STARSS_RATE, scene_events, starss_stem

pytestmark = pytest.mark.integration

SIZE, FPS, SECONDS, SCENES = (128, 64), 8, 3.0, 4
CFG = PreprocessConfig(clip_seconds=1.0, shard_size=4, video_size=SIZE, fps=FPS, gop=FPS, detector="none")
TRAIN = "dev-train-sony"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(fetch=False)


def options(out: Path, layout: Layout, videos: int = SCENES) -> SynthOptions:
    rate = STARSS_RATE if layout == "starss23" else 48000
    return SynthOptions(
        str(out), videos, SECONDS, seed=5, workers=1, size=SIZE, fps=FPS, rate=rate, layout=layout
    )


def left_scene(catalog: Catalog) -> Scene:
    """One drum kit at azimuth +90° (left), on the horizon, playing throughout, on a known background."""
    drums = catalog.by_label("drum_loop")[0]
    source = Source(
        id=0,
        kind="visible",
        object_class="drums",
        sound=drums,
        azimuth=math.pi / 2,
        elevation=0.0,
        azimuth_rate=0.0,
        elevation_amp=0.0,
        elevation_period=10.0,
        distance=1.0,  # within the critical distance: the direct sound outweighs the reverberation
        width=math.radians(40),
        gain_db=0.0,
        events=[(0.0, SECONDS)],
    )
    room = sample_room(np.random.default_rng(0), "train")
    return Scene(7, SECONDS, room, "procedural:0", -60.0, [source], 0.0)


@pytest.fixture(scope="module")
def starss_tree(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Path:
    """4 synthetic scenes + the scene at +90° (mix005, dev-test), and the bad files: a recording whose CSV
    has a bad row, one with 2-channel audio, a wav with no video, and a mic_dev recording."""
    root = tmp_path_factory.mktemp("starss23")
    opts = options(root, "starss23")
    assert generate(opts, catalog, progress=False)["failed"] == []
    for relative, data in layout_files(SCENES, render(left_scene(catalog), opts), opts).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    first = f"{TRAIN}/fold3_room1_mix001"
    for mix in (7, 8):  # the video of mix001, with a label file or an audio file of their own
        shutil.copy(
            root / f"video_dev/{first}.mp4", root / f"video_dev/{TRAIN}/fold3_room{mix}_mix00{mix}.mp4"
        )
    shutil.copy(root / f"foa_dev/{first}.wav", root / f"foa_dev/{TRAIN}/fold3_room7_mix007.wav")
    (root / f"metadata_dev/{TRAIN}/fold3_room7_mix007.csv").write_text("0,8,0,90,0\n1,8,0,400,0\n")
    stereo = np.zeros((round(SECONDS * STARSS_RATE), 2), np.float32)
    sf.write(root / f"foa_dev/{TRAIN}/fold3_room8_mix008.wav", stereo, STARSS_RATE, subtype="PCM_16")
    shutil.copy(root / f"foa_dev/{first}.wav", root / f"foa_dev/{TRAIN}/fold3_room9_mix009.wav")
    (root / f"mic_dev/{first}.wav").parent.mkdir(parents=True)
    shutil.copy(root / f"foa_dev/{first}.wav", root / f"mic_dev/{first}.wav")
    return root


@pytest.fixture(scope="module")
def starss_dataset(ray_head: str, starss_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    output = str(tmp_path_factory.mktemp("starss-shards"))
    cfg = PreprocessConfig(**{**CFG.__dict__, "layout": "starss23"})
    return output, run(str(starss_tree), output, cfg, progress=False).to_dict()


def samples(output: str, manifest: dict) -> list[dict[str, bytes]]:
    """Every sample of the dataset: extension -> bytes."""
    out = []
    for name in manifest["shards"]:
        with tarfile.open(f"{output}/{name}.tar") as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        out += members.values()
    return out


def csv_rows(path: Path) -> list[list[float]]:
    return [[float(x) for x in row] for row in csv.reader(path.read_text().splitlines())]


def test_starss23_clips_carry_the_labels_of_their_100ms_frames(starss_tree: Path, starss_dataset) -> None:
    output, manifest = starss_dataset
    found = samples(output, manifest)
    assert len(found) == (SCENES + 1) * 3  # five 3-s recordings of 1-s clips
    overlaps = 0
    for sample in found:
        meta = json.loads(sample["json"])
        stem = meta["dataset"]["stem"]
        folder, name = stem.split("/")
        match = STARSS_STEM.fullmatch(name)
        assert match and (folder, match["fold"]) in (("dev-train-sony", "3"), ("dev-test-sony", "4"))
        assert meta["dataset"] == {
            "layout": "starss23",
            "stem": stem,
            "split": folder.removesuffix("-sony"),
            "fold": int(match["fold"]),
            "room": int(match["room"]),
        }
        first = round(meta["start_s"] / FRAME_SECONDS)
        expected = [  # the CSV's rows inside the clip, frames counted from its start, cm as metres
            [f - first, c, s, az, el, d / 100]
            for f, c, s, az, el, d in csv_rows(starss_tree / f"metadata_dev/{stem}.csv")
            if first <= f < first + 10
        ]
        assert meta["labels"] == expected
        frames = [row[0] for row in meta["labels"]]
        overlaps += len(frames) - len(set(frames))  # a frame repeats per overlapping event
    assert overlaps > 0


def test_the_label_csv_is_the_scene_ground_truth(starss_tree: Path, catalog: Catalog) -> None:
    """Each sounding source is labelled in the 100-ms frames whose middle its events cover, at its
    trajectory's direction, as the class its sound maps onto; nothing else is labelled."""
    opts = options(starss_tree, "starss23")
    for index in range(SCENES):
        scene = scene_for(index, opts, catalog, frozenset(held_out_sources(catalog)))
        truth = ground_truth(scene, [])
        rows = csv_rows(starss_tree / f"metadata_dev/{starss_stem(index, SCENES)}.csv")
        expected = 0
        for source in truth["sources"]:
            if source["sound_class"] is None:
                continue
            cls = CLASSES.index(STARSS_CLASS_OF_LABEL[source["sound_class"]])
            t, az, el = np.array(source["trajectory"]).T
            az = np.unwrap(az, period=360)  # the seam at ±180° would break the interpolation
            mine = [r for r in rows if r[1] == cls]
            on = [f for f in range(30) if any(a <= (f + 0.5) / 10 < b for a, b in source["active"])]
            expected += len(on)
            for f in on:  # at the frame's middle: within 1° (integer degrees) of the 10-Hz trajectory
                mid_az, mid_el = np.interp((f + 0.5) / 10, t, az), np.interp((f + 0.5) / 10, t, el)
                assert any(
                    r[0] == f and abs((r[3] - mid_az + 180) % 360 - 180) <= 1.5 and abs(r[4] - mid_el) <= 1.5
                    for r in mine
                ), (index, source["id"], f)
        assert len(rows) == expected == len(scene_events(scene))


def test_a_source_at_plus_90_is_on_the_left_and_in_front_when_steered_there(starss_dataset) -> None:
    output, manifest = starss_dataset
    left = [s for s in samples(output, manifest) if "mix005" in json.loads(s["json"])["dataset"]["stem"]]
    assert len(left) == 3
    background = load_background("procedural:0", *SIZE).astype(float)
    for sample in left:
        assert {tuple(row[1:5]) for row in json.loads(sample["json"])["labels"]} == {
            (CLASSES.index("music"), 0, 90.0, 0.0)
        }
        with av.open(io.BytesIO(sample["mp4"])) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        change = np.abs(frame - background).mean(axis=(0, 2))  # per column: where the sprite is drawn
        drawn = np.flatnonzero(change > change.max() / 2)
        assert abs(drawn.mean() - SIZE[0] / 4) <= 3, drawn  # x = 0.5 − az/2π: a quarter from the left
        foa, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        foa = torch.from_numpy(np.ascontiguousarray(foa.T))
        # the front cardioid of the FOA steered to +90° hears the source; steered to −90°, its null does
        left_front, right_front = (
            float(mono_decode(steer(foa, a, 0.0)).square().mean()) for a in (math.pi / 2, -math.pi / 2)
        )
        print(f"front energy steered to +90° over −90°: {left_front / right_front:.1f}")
        assert left_front > 4 * right_front  # 6 dB


def test_unusable_files_are_rejected_with_their_reason_and_the_rest_is_processed(
    starss_tree: Path, starss_dataset
) -> None:
    _, manifest = starss_dataset
    inputs = manifest["inputs"]
    rejected = {
        Path(url).relative_to(starss_tree).as_posix(): e["reason"]
        for url, e in inputs.items()
        if e["status"] == "rejected"
    }
    assert set(rejected) == {
        f"video_dev/{TRAIN}/fold3_room7_mix007.mp4",
        f"video_dev/{TRAIN}/fold3_room8_mix008.mp4",
        f"foa_dev/{TRAIN}/fold3_room9_mix009.wav",
        f"mic_dev/{TRAIN}/fold3_room1_mix001.wav",
    }
    assert rejected[f"video_dev/{TRAIN}/fold3_room7_mix007.mp4"].endswith(
        f"metadata_dev/{TRAIN}/fold3_room7_mix007.csv:2: azimuth 400.0° outside [-180, 180]; "
        "fix or remove the row"
    )
    assert (
        "fold3_room8_mix008.wav: audio has 2 channels;"
        in rejected[f"video_dev/{TRAIN}/fold3_room8_mix008.mp4"]
    )
    assert "has no video" in rejected[f"foa_dev/{TRAIN}/fold3_room9_mix009.wav"]
    assert rejected[f"mic_dev/{TRAIN}/fold3_room1_mix001.wav"] == MIC_REFUSED
    accepted = [e for e in inputs.values() if e["status"] == "accepted"]
    assert len(accepted) == SCENES + 1 and all(e["clips"] == 3 for e in accepted)
    totals = manifest["totals"]
    assert totals["accepted"] + totals["rejected"] == totals["inputs"] == SCENES + 1 + 4
    assert manifest["settings"]["layout"] == "starss23"


def test_yt360_clips_carry_their_split(
    ray_head: str, catalog: Catalog, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("yt360")
    assert generate(options(root, "yt360", videos=3), catalog, progress=False)["failed"] == []
    stray = next((root / "video").glob("*.mp4"))
    shutil.copy(stray, root / "video/notlisted00-5.mp4")  # in no list: rejected
    output = str(tmp_path_factory.mktemp("yt360-shards"))
    cfg = PreprocessConfig(**{**CFG.__dict__, "layout": "yt360"})
    manifest = run(str(root), output, cfg, progress=False).to_dict()
    splits = {ytid: name for name in ("train", "test") for ytid in (root / f"{name}.txt").read_text().split()}
    assert sorted(splits.values()) == ["test", "train", "train"]
    found = samples(output, manifest)
    assert len(found) == 3 * 3
    for sample in found:
        meta = json.loads(sample["json"])
        ytid = meta["dataset"]["stem"].rsplit("-", 1)[0]
        assert meta["dataset"]["layout"] == "yt360" and meta["dataset"]["split"] == splits[ytid]
        assert "labels" not in meta  # YT-360 is unlabelled
    reason = manifest["inputs"][str(root / "video/notlisted00-5.mp4")]["reason"]
    assert "not listed in segments.txt" in reason
    assert manifest["totals"]["accepted"] == 3 and manifest["totals"]["rejected"] == 1
