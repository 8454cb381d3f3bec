"""The science experiment's plan, its arms and the pooling of seeds; a tiny plan end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cluster import experiment
from evaluation.aggregate import CSV_COLUMNS, ArmRuns, pool, to_csv, to_markdown
from evaluation.bootstrap import Estimate
from evaluation.suite import Report
from evaluation.tasks import Scored, TaskResult
from trainer.typed_config import flatten

# What a trained arm's config may differ in from another's besides its own overrides: the curriculum.
CURRICULUM_KEYS = {"train.avc_epochs", "train.avsa_epochs", "train.checkpoint_url"}


def test_the_science_plan_has_every_arm_the_issue_names_and_valid_differences() -> None:
    plan = experiment.load_plan()
    assert plan.worlds == ["easy", "default"]
    both = {"random_init", "avc_only", "curriculum", "negative_control"}
    assert set(plan.arms_in("default")) == both  # avsa_scratch is cut for time (see the plan)
    assert set(plan.arms_in("easy")) == both | {"curriculum_logmel", "curriculum_cardioids"}
    assert len(plan.seeds) >= 3 and plan.data.scenes >= 300
    assert ("curriculum", "avc_only") in plan.differences and ("avc_only", "random_init") in plan.differences
    trained = experiment.units(plan)
    assert len(trained) == 3 * (5 + 3) and len(set(trained)) == len(trained)
    assert [u.seed for u in trained] == sorted(u.seed for u in trained)  # whole seeds first


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("seedz: [0]\n", r"unknown keys.*seedz"),
        ("arms: {a: {stages: avc}}\ndifferences: [[a, b]]\n", r"a - b names an arm"),
        ("worlds: [hard]\n", r"world 'hard'"),
        ("worlds: [default]\narms: {a: {stages: avc, worlds: [easy]}}\n", r"worlds \['easy'\] that are not"),
    ],
)
def test_a_bad_plan_is_refused_naming_what_is_wrong(tmp_path: Path, text: str, error: str) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=error):
        experiment.load_plan(bad)


def test_the_plans_world_reaches_the_training_and_held_out_scenes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataloading.synth.assets
    import dataloading.synth.evalsets
    import dataloading.synth.generate

    path = tmp_path / "plan.yaml"
    path.write_text(
        f"out: {tmp_path / 'work'}\nworlds: [easy, default]\ndata: {{scenes: 3, held_out_scenes: 2}}\n"
    )
    plan = experiment.load_plan(path)
    made: list = []
    monkeypatch.setattr(dataloading.synth.assets, "build_catalog", lambda: None)
    monkeypatch.setattr(dataloading.synth.generate, "generate", lambda opts, catalog: made.append(opts))
    monkeypatch.setattr(dataloading.synth.evalsets, "classification_set", lambda *a, **k: None)
    monkeypatch.setattr(dataloading.synth.evalsets, "doa_set", lambda *a, **k: None)
    monkeypatch.setattr(experiment.subprocess, "run", lambda *a, **k: None)
    experiment.make_data(plan, experiment.load_config())
    assert [(o.videos, o.world) for o in made] == [(3, "easy"), (2, "easy"), (3, "default"), (2, "default")]
    assert len({o.out for o in made}) == 4  # each world's scenes in a folder of their own


def test_each_world_gets_its_own_table_and_rows_named_by_world() -> None:
    plan = experiment.load_plan()
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 2)
    reports = {
        arm: [_report({"model": rng.random(40), "random_init": rng.random(40)}, groups) for _ in range(2)]
        for arm in ("curriculum", "avc_only", "curriculum_logmel")
    }
    rows = experiment.pool_world(plan, "easy", reports)
    arms = {r.arm for r in rows}
    assert {"random_init", "curriculum", "curriculum - avc_only", "curriculum - curriculum_logmel"} <= arms
    assert "curriculum - curriculum_cardioids" not in arms  # an arm without runs has no difference
    assert experiment.in_world("easy", "curriculum - avc_only") == "easy/curriculum - easy/avc_only"
    assert experiment.pool_world(plan, "default", {}) == []


def test_arms_differ_only_in_what_they_name_and_get_the_same_steps() -> None:
    plan = experiment.load_plan()
    per_pass = plan.data.scenes // plan.overrides["data.batch_size"]  # one clip per scene, one rank
    configs = {
        arm: flatten(experiment.arm_config(plan, experiment.Unit("easy", arm, 0), per_pass))
        for arm in plan.arms
    }
    reference = configs["curriculum"]
    for arm, cfg in configs.items():
        named = {f"{k}" for k in plan.arms[arm].overrides}
        differing = {k for k in cfg if cfg[k] != reference[k]}
        assert differing <= named | CURRICULUM_KEYS, (arm, differing - named - CURRICULUM_KEYS)
        steps = (cfg["train.avc_epochs"] + cfg["train.avsa_epochs"]) * cfg["train.steps_per_epoch"]
        assert steps == (0 if arm == "random_init" else plan.steps), arm
    assert configs["avc_only"]["train.avsa_epochs"] == 0
    assert configs["curriculum"]["train.avc_epochs"] == configs["curriculum"]["train.avsa_epochs"]
    assert tuple(configs["negative_control"]["data.audio_yaw_offset_deg"]) == (90.0, 270.0)
    # Seeds change the initial weights and the data order, nothing else.
    other = flatten(experiment.arm_config(plan, experiment.Unit("easy", "curriculum", 1), per_pass))
    assert {k for k in other if other[k] != reference[k]} == {
        "train.seed",
        "data.seed",
        "train.checkpoint_url",
    }
    # Worlds change the data, nothing else.
    hard = flatten(experiment.arm_config(plan, experiment.Unit("default", "curriculum", 0), per_pass))
    assert {k for k in hard if hard[k] != reference[k]} == {"data.url", "train.checkpoint_url"}


def test_one_clip_per_scene_so_no_batch_holds_a_same_scene_negative() -> None:
    plan = experiment.load_plan()
    pre = experiment.preprocess_config(plan, experiment.load_config())
    assert pre.clip_seconds == plan.data.seconds  # each scene is cut into exactly one clip


def _report(values: dict[str, np.ndarray], groups: np.ndarray) -> Report:
    items = {"acc": Scored(groups, values)}
    zero = Estimate(0, 0, 0, 0)
    result = TaskResult("avsa_bin", "acc", {m: {"acc": zero} for m in values}, items=items)
    return Report("ckpt", 1, None, [result], 0.0)


def test_pooling_over_seeds_pairs_arms_by_seed_and_writes_the_issues_columns() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 4)
    base = [rng.random(200) for _ in range(3)]
    better = [_report({"model": b + 0.1, "random_init": b}, groups) for b in base]
    plain = [_report({"model": b, "random_init": b}, groups) for b in base]
    sources = {
        "random_init": ArmRuns(plain, "random_init"),
        "curriculum": ArmRuns(better),
        "avc_only": ArmRuns(plain),
    }
    rows = pool(sources, [("curriculum", "avc_only"), ("avc_only", "random_init")], resamples=200)
    by_arm = {r.arm: r for r in rows}
    assert by_arm["curriculum - avc_only"].estimate.mean == pytest.approx(0.1)
    assert by_arm["curriculum - avc_only"].estimate.low == pytest.approx(0.1)  # paired: exactly the shift
    assert by_arm["avc_only - random_init"].estimate.mean == pytest.approx(0.0)
    assert all(r.seeds == 3 for r in rows)
    lines = to_csv(rows).splitlines()
    assert tuple(lines[0].split(",")) == CSV_COLUMNS and len(lines) == 1 + len(rows)
    table = to_markdown(rows)
    assert "| curriculum |" in table and "| curriculum - avc_only | +10.0 [+10.0, +10.0] |" in table


TINY_PLAN = """
name: tiny
out: {out}
results: {results}
data:
  scenes: 6
  held_out_scenes: 6
  seconds: 1.0
  size: [128, 64]
  fps: 8
  classification_clips: 2
  doa_clips: 8
seeds: [0, 1]
steps: 2
overrides:
  model.preset: tiny
  data.batch_size: 2
  data.viewpoints: 2
  data.frames: 2
  data.fps: 8
  data.crop_size: 32
  data.n_mels: 16
  data.workers: 0
  data.stats_clips: 4
  eval.probe_epochs: 2
arms:  # one trained arm: each costs two `avsa train` starts (~20 s) on 2 cores
  random_init: {{stages: none}}
  curriculum: {{stages: curriculum}}
differences: [[curriculum, random_init]]
"""


@pytest.mark.integration
def test_a_tiny_plan_runs_end_to_end_and_continues_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PLAN.format(out=tmp_path / "work", results=tmp_path / "results"))
    plan = experiment.load_plan(path)
    seen: list[tuple[str, int]] = []
    result = experiment.run(plan, on_unit=lambda unit, report: seen.append((unit.arm, unit.seed)))
    assert seen == [("curriculum", 0), ("curriculum", 1)]
    csv_rows = (tmp_path / "results" / "tiny.csv").read_text().splitlines()
    arms = {line.split(",")[0] for line in csv_rows[1:]}
    assert arms == {"default/random_init", "default/curriculum", "default/curriculum - default/random_init"}
    assert {line.split(",")[1] for line in csv_rows[1:]} >= {"avc_bin", "avsa_bin", "doa", "doa_steered"}
    assert all(line.endswith(",2") for line in csv_rows[1:])  # two seeds behind every row
    progress = json.loads((tmp_path / "work" / "progress.json").read_text())
    assert progress["done"] == progress["total"] == 2
    assert (tmp_path / "results" / "tiny.png").read_bytes().startswith(b"\x89PNG")
    # The summary run in the plan's MLflow store: a metric and its interval per row, and the files.
    client = MlflowClient(experiment.tracking_uri(plan))
    summary = client.get_run(result["run_id"])
    first = csv_rows[1].split(",")
    logged = summary.data.metrics[f"{first[0].replace(' - ', '_minus_')}/{first[1]}/{first[2]}"]
    assert logged == pytest.approx(float(first[3]), rel=1e-5)
    assert len(summary.data.metrics) == 3 * (len(csv_rows) - 1)
    artifacts = {f.path for f in client.list_artifacts(result["run_id"])}
    assert artifacts == {"tiny.md", "tiny.csv", "tiny.png"}
    page = tmp_path / "results" / "tiny.md"
    took = re.search(r"2 units trained and evaluated in \d+ minutes", page.read_text())
    assert took, "the page says what the experiment took"
    # Every unit's row says when each of its stages left the plateau, from its checkpoint's watchdog.
    for seed in (0, 1):
        left = experiment.left_plateau(plan, experiment.Unit("default", "curriculum", seed))
        cells = [str(left.get(stage, "never")) for stage in ("avc", "avsa")]
        assert f"| default | curriculum | {seed} | {cells[0]} | {cells[1]} |" in page.read_text()
    # A second run finds every unit's report and trains nothing again; the page still says what the
    # units took, not the seconds it spent pooling them.
    again = experiment.run(plan)
    assert again["csv"] == result["csv"]
    assert took.group(0) in page.read_text()
