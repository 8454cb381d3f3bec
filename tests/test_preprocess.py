"""`avsa preprocess` end to end on the real stack: a Ray head, SeaweedFS S3, synthetic 360° videos.

Datasets are checked the way consumers read them: `tar tf`, webdataset, DALI with the .idx files,
and the manifest's counts and checksums.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cluster.preprocess import TASK_ATTEMPTS, run, run_on_pool
from cluster.stack import Stack
from dataloading.config import PreprocessConfig
from dataloading.schema import MANIFEST_NAME, ShardResult
from dataloading.shards import read_manifest
from dataloading.storage import TEMP_MARK, filesystem, join
from tests.helpers import CLIPS_PER_VIDEO, VIDEOS, bad_inputs, check_dataset, run_job, synth_videos

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CFG = PreprocessConfig(clip_seconds=1.0, shard_size=2, video_size=(256, 128), fps=16)
OUTAGE_S = 30.0
FLAGS = ["--clip-seconds", "1", "--shard-size", "2", "--size", "256x128", "--fps", "16", "--no-progress"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    synth_videos(folder, videos=VIDEOS, seconds=2.5, size="256x128", fps=16)
    return folder


@pytest.fixture(scope="module")
def s3_raw(stack: Stack, raw: Path) -> str:
    """The raw videos uploaded to the stack's bucket."""
    url = f"s3://{stack.state().bucket}/raw-{uuid.uuid4().hex[:8]}"
    fs, path = filesystem(url, stack.storage())
    for video in sorted(raw.glob("video_*")):
        fs.put_file(str(video), f"{path}/{video.name}")
    return url


@pytest.fixture(scope="module")
def s3_dataset(stack: Stack, ray_head: str, s3_raw: str) -> tuple[str, dict]:
    output = s3_raw.replace("/raw-", "/shards-")
    return output, run(s3_raw, output, CFG, stack.storage(), progress=False).to_dict()


@pytest.fixture(scope="module")
def local_dataset(ray_head: str, raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output = str(tmp_path_factory.mktemp("local") / "shards")
    manifest = run(str(raw), output, CFG, progress=False)
    assert read_manifest(output) == manifest  # what it returns is what it wrote
    return output, manifest.to_dict()


def without_run(manifest: dict) -> dict:
    """The manifest minus timings and run bookkeeping (what two equivalent runs share)."""
    return {k: v for k, v in manifest.items() if k != "run"}


def test_local_dataset_reads_with_tar_webdataset_and_dali(local_dataset, raw: Path) -> None:
    output, manifest = local_dataset
    assert manifest["totals"] | {"bytes": 0} == {
        "inputs": VIDEOS,
        "accepted": VIDEOS,
        "rejected": 0,
        "shards": VIDEOS * CLIPS_PER_VIDEO // CFG.shard_size,
        "samples": VIDEOS * CLIPS_PER_VIDEO,
        "bytes": 0,
    }
    assert json.loads(Path(output, MANIFEST_NAME).read_text()) == manifest
    check_dataset(output, manifest, None)


def test_s3_dataset_reads_and_matches_the_local_one(stack: Stack, s3_dataset, local_dataset) -> None:
    output, manifest = s3_dataset
    check_dataset(output, manifest, stack.storage())
    local = local_dataset[1]

    def clips(m: dict) -> list[list[str]]:  # keys without the hash of the input URL, which differs
        return [[re.sub(r"-[0-9a-f]{8}_", "_", k) for k in s["keys"]] for s in m["shards"].values()]

    assert clips(manifest) == clips(local)


def test_ray_job_submit_makes_the_same_manifest_as_a_local_run(stack: Stack, s3_dataset, s3_raw) -> None:
    output = s3_raw.replace("/raw-", "/job-")
    env = {**os.environ, **stack.client_env()}
    s3_env = {k: v for k, v in stack.client_env().items() if k.startswith("AWS_")}
    command = ["avsa", "preprocess", "--input", s3_raw, "--output", output, *FLAGS]
    logs = run_job(env, *command, env_vars=s3_env, working_dir=REPO, timeout_s=300)
    assert "3 of 3 inputs accepted" in logs
    fs, path = filesystem(join(output, MANIFEST_NAME), stack.storage())
    job_manifest = json.loads(fs.cat_file(path))
    assert without_run(job_manifest) == without_run(s3_dataset[1])


def test_killed_actor_is_restarted_and_the_dataset_is_complete_then_a_rerun_is_a_noop(
    stack: Stack, ray_head: str, raw: Path, tmp_path: Path
) -> None:
    from ray.util.state import list_actors

    cfg = PreprocessConfig(**{**CFG.__dict__, "shard_size": 1})
    output = str(tmp_path / "shards")
    killed: list[int] = []
    before_kill: set[int] = set()
    pids_after_kill: list[int] = []

    def kill_the_busy_one(result: ShardResult) -> None:
        if killed:
            pids_after_kill.append(result.pid)
            return
        # The other actor may still be starting when the first shard comes back (its process is
        # spawned on demand), and the state API lags the GCS: wait for it to be listed as alive.
        deadline = time.monotonic() + 60
        while True:
            alive = list_actors(
                address=stack.client_env()["RAY_API_SERVER_ADDRESS"],
                filters=[("class_name", "=", "PreprocessWorker"), ("state", "=", "ALIVE")],
            )
            busy = [a.pid for a in alive if a.pid != result.pid]
            if busy or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        before_kill.update(a.pid for a in alive)
        assert busy, alive
        os.kill(busy[0], signal.SIGKILL)  # the other actor, usually mid-shard
        killed.append(busy[0])

    manifest = run(str(raw), output, cfg, progress=False, on_shard=kill_the_busy_one).to_dict()
    # The killed process may have finished one shard just before the kill (its result still in
    # flight), never more; the rest of its share went to the actor Ray restarted in a new process.
    assert killed and pids_after_kill.count(killed[0]) <= 1
    assert set(pids_after_kill) - before_kill, (before_kill, pids_after_kill)
    assert manifest["run"]["shards"] == {"written": VIDEOS * CLIPS_PER_VIDEO}
    assert all(e["clips"] == CLIPS_PER_VIDEO and e["failed_clips"] == 0 for e in manifest["inputs"].values())
    check_dataset(output, manifest, None)

    Path(output, "shard-000002.tar.tmp-0123abcd").write_bytes(b"half an upload by a killed attempt")
    again = run(str(raw), output, cfg, progress=False).to_dict()
    assert again["run"]["shards"] == {"skipped": VIDEOS * CLIPS_PER_VIDEO}
    assert without_run(again) == without_run(manifest)
    assert not [p.name for p in Path(output).iterdir() if TEMP_MARK in p.name]


def test_a_30_s_s3_outage_mid_preprocessing_loses_and_duplicates_nothing(
    stack: Stack, ray_head: str, s3_raw: str
) -> None:
    cfg = PreprocessConfig(**{**CFG.__dict__, "shard_size": 1})
    output = s3_raw.replace("/raw-", "/outage-")
    outage: dict[str, float] = {}

    def kill_s3_once(result: ShardResult) -> None:
        if outage:
            return
        stack.kill("s3")  # the actors are reading inputs and writing shards; the driver still has to
        outage["start"] = time.monotonic()  # write the manifest

        def heal() -> None:
            time.sleep(OUTAGE_S)
            stack.heal(["s3"])
            outage["end"] = time.monotonic()

        threading.Thread(target=heal, daemon=True).start()

    manifest = run(s3_raw, output, cfg, stack.storage(), progress=False, on_shard=kill_s3_once).to_dict()
    assert time.monotonic() > outage["end"] and outage["end"] - outage["start"] >= OUTAGE_S
    assert manifest["totals"]["accepted"] == manifest["totals"]["inputs"] == VIDEOS
    assert manifest["run"]["shards"] == {"written": VIDEOS * CLIPS_PER_VIDEO}
    assert all(e["clips"] == CLIPS_PER_VIDEO and e["failed_clips"] == 0 for e in manifest["inputs"].values())
    check_dataset(output, manifest, stack.storage())  # each shard once, its checksum and its samples
    fs, path = filesystem(output, stack.storage())
    tars = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True) if p.endswith(".tar"))
    assert tars == sorted(f"{name}.tar" for name in manifest["shards"])  # none missing, none extra
    assert not [p for p in fs.ls(path, detail=False) if TEMP_MARK in p]


class Poisoned:
    """An actor whose task ``k == poison`` ends its process every time, as a decoder crash would."""

    def work(self, k: int, poison: int) -> tuple[int, int]:
        if k == poison:
            os._exit(1)
        return k, os.getpid()


def test_a_task_that_kills_every_actor_fails_alone_and_the_pool_stays_whole(ray_head: str) -> None:
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)(Poisoned)
    pool = [actor_class.remote() for _ in range(2)]
    first = list(pool)
    results: dict[int, tuple] = {}

    def finished(k: int, result: tuple[int, int] | None, error: str | None) -> None:
        assert k not in results  # each task reported once
        results[k] = (result, error)

    poison = 2
    again = run_on_pool(pool, 6, lambda actor, k: actor.work.remote(k, poison), finished, actor_class.remote)
    assert sorted(results) == list(range(6))
    result, error = results[poison]
    assert result is None and error and "ActorDiedError" in error
    assert all(results[k][0][0] == k and results[k][1] is None for k in results if k != poison)
    assert again == TASK_ATTEMPTS - 1  # only the poisoned task was given out again
    assert len(pool) == 2 and pool != first  # its dead actors were replaced …
    assert len(set(ray.get([a.work.remote(-1, poison) for a in pool]))) == 2  # … by live ones
    for actor in pool:
        ray.kill(actor)


@pytest.mark.timeout(120)  # before actors joined only once started, this waited forever
def test_a_pool_larger_than_the_room_left_runs_on_the_actors_that_start(ray_head: str) -> None:
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    actor_class = ray.remote(num_cpus=1)(Poisoned)
    others = [actor_class.remote() for _ in range(cpus - 1)]  # another job holding all but one CPU
    ray.get([a.__ray_ready__.remote() for a in others])
    pool = [actor_class.remote() for _ in range(2)]  # one fits, the other waits for a CPU
    results: dict[int, tuple[int, int]] = {}

    def finished(k: int, result: tuple[int, int] | None, error: str | None) -> None:
        assert result is not None and error is None
        results[k] = result

    assert run_on_pool(pool, 4, lambda actor, k: actor.work.remote(k, -1), finished, actor_class.remote) == 0
    assert sorted(results) == [0, 1, 2, 3]
    assert len({pid for _, pid in results.values()}) == 1  # all on the one actor that started
    for actor in [*others, *pool]:
        ray.kill(actor)


def test_a_damaged_shard_is_redone_on_resume(ray_head: str, local_dataset, tmp_path: Path) -> None:
    output, manifest = local_dataset
    damaged = Path(output, "shard-000001.tar")
    damaged.write_bytes(damaged.read_bytes()[:1000])  # e.g. a copy cut short outside our control
    again = run(manifest["settings"]["input"], output, CFG, progress=False).to_dict()
    assert again["run"]["shards"] == {"skipped": 2, "written": 1}
    assert without_run(again) == without_run(manifest)


def avsa_cli(
    ray_head: str, stack: Stack, *args: str, flags: list[str] = FLAGS
) -> subprocess.CompletedProcess:
    """Run `avsa preprocess` in its own process against the stack's Ray head and S3."""
    env = {**os.environ, **{k: v for k, v in stack.client_env().items() if k.startswith("AWS_")}}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "preprocess", "--ray-address", ray_head, *args, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_bad_inputs_are_rejected_with_reasons_and_good_ones_all_present(
    stack: Stack, ray_head: str, raw: Path, tmp_path: Path
) -> None:
    expected = bad_inputs(tmp_path / "bad")
    expected[f"s3://{stack.state().bucket}/nowhere/absent.mp4"] = "does not exist"
    good = [str(p) for p in sorted(raw.glob("video_*.mp4"))]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(["# a mixed corpus", *good, *expected]) + "\n")
    output = str(tmp_path / "shards")

    done = avsa_cli(ray_head, stack, "--input", str(listing), "--output", output)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(Path(output, MANIFEST_NAME).read_text())
    inputs = manifest["inputs"]
    assert set(inputs) == set(good) | set(expected)
    for url, reason in expected.items():
        assert inputs[url]["status"] == "rejected" and re.search(reason, inputs[url]["reason"]), url
        assert Path(url).name in done.stderr  # the summary names every rejected input
    for url in good:
        assert inputs[url]["status"] == "accepted" and inputs[url]["clips"] == CLIPS_PER_VIDEO
    totals = manifest["totals"]
    assert totals["accepted"] + totals["rejected"] == totals["inputs"] == len(good) + len(expected)
    assert totals["samples"] == len(good) * CLIPS_PER_VIDEO
    check_dataset(output, manifest, None)

    only_bad = tmp_path / "bad.txt"
    only_bad.write_text("\n".join(expected) + "\n")
    nothing = avsa_cli(ray_head, stack, "--input", str(only_bad), "--output", str(tmp_path / "none"))
    assert nothing.returncode == 1, nothing.stderr[-3000:]
    assert "0 of 11 inputs accepted" in nothing.stderr.replace("\n", " ")


def test_progress_line_shows_videos_clips_shards_and_rate(
    ray_head: str, stack: Stack, raw: Path, tmp_path
) -> None:
    flags = [f for f in FLAGS if f != "--no-progress"]
    started = time.monotonic()
    done = avsa_cli(ray_head, stack, "--input", str(raw), "--output", str(tmp_path / "shards"), flags=flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"6/6 \[.*clip/s, videos=3 shards=3/3\]", done.stderr), done.stderr[-2000:]
    assert time.monotonic() - started < 120


def test_object_directions_match_the_synthetic_ground_truth(local_dataset, raw: Path) -> None:
    """Hit rate (a visible object's centre within max(10°, half its width) of a detection) and the
    angular error of the hits, against the same number of uniformly random directions as a floor."""
    output, manifest = local_dataset
    rng = np.random.default_rng(0)
    hits = chance = total = 0
    errors: list[float] = []
    for name in manifest["shards"]:
        with tarfile.open(f"{join(output, name)}.tar") as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        for meta in metas:
            truth = json.loads(Path(meta["source"]).with_suffix(".json").read_text())
            found = np.radians([o["direction"] for o in meta["objects"]])
            z = rng.uniform(-1, 1, len(found))  # uniform on the sphere
            guess = np.stack([rng.uniform(-np.pi, np.pi, len(found)), np.arcsin(z)], axis=1)
            middle = meta["start_s"] + meta["duration_s"] / 2
            for source in truth["sources"]:
                if not source["visible"] or source["object_class"] == "pillar":
                    continue
                trajectory = np.array(source["trajectory"])
                az, el = np.radians(trajectory[np.argmin(abs(trajectory[:, 0] - middle)), 1:])
                tolerance = max(np.radians(10), np.radians(source["angular_width_deg"]) / 2)
                total += 1
                error = min((angle(az, el, *d) for d in found), default=np.pi)
                hits += error <= tolerance
                chance += min((angle(az, el, *d) for d in guess), default=np.pi) <= tolerance
                if error <= tolerance:
                    errors.append(np.degrees(error))
    print(
        f"\nobject directions: hit rate {hits / total:.2f} ({hits}/{total} visible objects), "
        f"mean angular error of hits {np.mean(errors):.1f}°, random-direction floor {chance / total:.2f}"
    )
    assert hits / total >= 0.6 and hits > chance
    assert np.mean(errors) < 10


def angle(az1: float, el1: float, az2: float, el2: float) -> float:
    """Great-circle angle in radians."""
    c = np.sin(el1) * np.sin(el2) + np.cos(el1) * np.cos(el2) * np.cos(az1 - az2)
    return float(np.arccos(np.clip(c, -1, 1)))
