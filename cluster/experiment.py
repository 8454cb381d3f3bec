"""`avsa experiment`: the papers' comparison at CPU scale, from a YAML plan, resumable, with progress.

1. Data: synthetic training and held-out scenes (one clip each; every panorama turned by its own yaw)
   and the labeled evaluation sets, preprocessed into shards on a local Ray.
2. Every (arm, seed) unit: train the plan's number of optimizer steps with the arm's curriculum and
   overrides, then evaluate the last checkpoint with the full suite. The report, with every per-item
   value, is kept beside the run, so a rerun skips finished units.
3. Pool: each arm over its seeds and the paired differences between arms, with 95 % intervals from a
   bootstrap over seeds × held-out scenes, as markdown, CSV and a plot, logged to MLflow too.

A plan names one or more worlds (``synth.world``); every arm runs in each of them unless it names
its own, so one plan compares the arms on an easy and a hard world with one page of results.

Folder of an experiment (``out`` in the plan)::

    data/<world>/raw, data/<world>/raw-heldout, data/eval/{classification,doa}   generated
    data/<world>/shards, data/<world>/shards-heldout                             preprocessed
    runs/<world>/<arm>/seed<k>/checkpoints/ and report.json          trained and evaluated units
    progress.json                                                    units done and an ETA
    mlflow.db, mlartifacts/                                          the runs and the summary in MLflow
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from dataloading.config import World
from trainer.config import Config, load_config

log = logging.getLogger(__name__)

Stages = Literal["none", "avc", "avsa", "curriculum"]
PLAN = Path(__file__).with_name("experiments") / "science.yaml"
REPORT = "report.json"
TIMING = "seconds.txt"  # beside a unit's report: how long it took to train and evaluate


@dataclass
class DataPlan:
    """What the experiment generates: scenes of ``seconds`` (one clip each) and the labeled sets."""

    scenes: int = 800
    held_out_scenes: int = 200
    seconds: float = 2.0
    size: tuple[int, int] = (256, 128)  # equirect pixels (width, height)
    fps: int = 16
    classification_clips: int = 30  # per class and split
    doa_clips: int = 300  # per split
    labeled_sets: bool = True  # false: no classification/DOA sets; units are scored on held-out clips only


@dataclass
class Arm:
    """One arm: which pretext stages it trains (``none``: the untrained model) and its own overrides."""

    stages: Stages = "curriculum"
    overrides: dict[str, Any] = field(default_factory=dict)
    worlds: list[World] = field(default_factory=list)  # empty: every world of the plan


@dataclass
class Plan:
    """An experiment: data, seeds, the step budget every trained arm gets, overrides for every arm,
    the arms, and the differences to report."""

    name: str = "science"
    out: str = ".avsa/experiments/science"
    results: str = "docs/results"
    data: DataPlan = field(default_factory=DataPlan)
    worlds: list[World] = field(default_factory=lambda: ["default"])
    """What the scenes hold (`synth.world`), training and held-out alike; each world has its own data."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 600
    overrides: dict[str, Any] = field(default_factory=dict)
    arms: dict[str, Arm] = field(default_factory=dict)
    differences: list[tuple[str, str]] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return Path(self.out)

    def arms_in(self, world: World) -> list[str]:
        """The arms that run in ``world``, in plan order."""
        return [name for name, arm in self.arms.items() if not arm.worlds or world in arm.worlds]

    def data_folder(self, world: World) -> Path:
        """Scenes and shards of ``world``."""
        return self.folder / "data" / world


def load_plan(path: str | Path = PLAN, **changes: Any) -> Plan:
    """The plan in the YAML file at ``path`` (keys as in :class:`Plan`), with ``changes`` applied.

    Unknown keys, unknown arms in ``differences`` and arms without a ``curriculum``-style reference
    are refused with the file named.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = set(Plan.__dataclass_fields__)
    if unknown := set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    data = DataPlan(**{k: tuple(v) if k == "size" else v for k, v in (raw.pop("data", None) or {}).items()})
    arms = {name: Arm(**spec) for name, spec in (raw.pop("arms", None) or {}).items()}
    differences = [tuple(pair) for pair in raw.pop("differences", None) or []]
    plan = replace(Plan(**raw, data=data, arms=arms, differences=differences), **changes)  # type: ignore[arg-type]
    for a, b in plan.differences:
        if a not in plan.arms or b not in plan.arms:
            raise ValueError(f"{path}: difference {a} - {b} names an arm that is not in arms")
    for world in [*plan.worlds, *(w for arm in plan.arms.values() for w in arm.worlds)]:
        if world not in get_args(World):
            raise ValueError(f"{path}: world {world!r} is none of {list(get_args(World))}")
    if strays := {w for arm in plan.arms.values() for w in arm.worlds} - set(plan.worlds):
        raise ValueError(f"{path}: arms name worlds {sorted(strays)} that are not in worlds {plan.worlds}")
    if "random_init" in plan.arms and plan.arms["random_init"].stages != "none":
        raise ValueError(f"{path}: the random_init arm trains nothing (stages: none)")
    return plan


def arm_config(plan: Plan, unit: Unit, steps_per_pass: int) -> Config:
    """The training config of ``unit``: the plan's overrides, then its arm's, then its curriculum as
    whole passes over its world's data, the seed, and the unit's folders. Arms therefore differ only
    in the keys they name."""
    spec, seed = plan.arms[unit.arm], unit.seed
    passes = 0 if spec.stages == "none" else max(1, round(plan.steps / steps_per_pass))
    avc = {"none": 0, "avc": passes, "avsa": 0, "curriculum": passes // 2}[spec.stages]
    overrides = {
        **plan.overrides,
        **spec.overrides,
        "data.url": str(plan.data_folder(unit.world) / "shards"),
        "train.steps_per_epoch": steps_per_pass,
        "train.avc_epochs": avc,
        "train.avsa_epochs": passes - avc,
        "train.seed": seed,
        "data.seed": seed,
        "train.checkpoint_url": str(unit.folder(plan) / "checkpoints"),
        "tracking.uri": tracking_uri(plan),
        "tracking.experiment": f"{plan.name}-runs",
    }
    return load_config(None, overrides)


def tracking_uri(plan: Plan) -> str:
    """The experiment's MLflow store: the units' training runs and the summary run."""
    return f"sqlite:///{(plan.folder / 'mlflow.db').resolve()}"


@dataclass(frozen=True)
class Unit:
    """One trained and evaluated (world, arm, seed)."""

    world: World
    arm: str
    seed: int

    def folder(self, plan: Plan) -> Path:
        return plan.folder / "runs" / self.world / self.arm / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.world}/{self.arm} seed {self.seed}"


def units(plan: Plan) -> list[Unit]:
    """Every (world, arm, seed) that trains, seed-major: an interrupted experiment has whole seeds
    done."""
    return [
        Unit(world, arm, seed)
        for seed in plan.seeds
        for world in plan.worlds
        for arm in plan.arms_in(world)
        if plan.arms[arm].stages != "none"
    ]


class Progress:
    """Units done, their durations and an ETA, on the console and in ``progress.json``."""

    def __init__(self, plan: Plan, total: int) -> None:
        self.path, self.total, self.started = plan.folder / "progress.json", total, time.time()
        self.durations: list[float] = []
        self.done = 0

    def eta_s(self) -> float | None:
        """Seconds left at the mean duration of the units run so far (None before the first)."""
        if not self.durations:
            return None
        return (self.total - self.done) * sum(self.durations) / len(self.durations)

    def record(self, unit: Unit, seconds: float | None, summary: str) -> None:
        """A unit finished (``seconds`` None: it was already done before this run)."""
        self.done += 1
        if seconds is not None:
            self.durations.append(seconds)
        eta = self.eta_s()
        when = "-" if eta is None else time.strftime("%H:%M", time.localtime(time.time() + eta))
        log.info(
            "[%d/%d] %s %s; ETA %s (%s left)", self.done, self.total, unit, summary, when, _duration(eta)
        )
        state = {
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(time.time() - self.started),
            "eta_s": None if eta is None else round(eta),
            "last": str(unit),
        }
        self.path.write_text(json.dumps(state, indent=1))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return (
        f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
        if seconds >= 3600
        else f"{seconds / 60:.0f} min"
    )


def make_data(plan: Plan, base: Config) -> None:
    """Generate and preprocess the experiment's data, skipping whatever is there already."""
    from dataloading.synth.assets import build_catalog
    from dataloading.synth.evalsets import classification_set, doa_set
    from dataloading.synth.generate import SynthOptions, generate

    data = plan.data
    catalog = build_catalog()
    for world in plan.worlds:
        root = plan.data_folder(world)
        for name, videos, seed in (("raw", data.scenes, 0), ("raw-heldout", data.held_out_scenes, 1000)):
            if not (root / name / "synth.json").exists():
                options = SynthOptions(
                    str(root / name), videos, data.seconds, seed, size=data.size, fps=data.fps, world=world
                )
                generate(options, catalog)
    labeled = plan.folder / "data" / "eval"  # sounds alone: the same sets serve every world
    if data.labeled_sets and not (labeled / "classification" / "manifest.json").exists():
        classification_set(str(labeled / "classification"), catalog, data.classification_clips, 0)
    if data.labeled_sets and not (labeled / "doa" / "manifest.json").exists():
        doa_set(str(labeled / "doa"), catalog, data.doa_clips, 0)
    pre = preprocess_config(plan, base)
    for root, (raw, shards) in itertools.product(
        map(plan.data_folder, plan.worlds), (("raw", "shards"), ("raw-heldout", "shards-heldout"))
    ):
        if not (root / shards / "manifest.json").exists():
            # In a process of its own: a Ray started and shut down in this one cannot be started again
            # here with token auth (the driver keeps the first token's state).
            cmd = [sys.executable, "-m", "cluster.cli", "preprocess", "--input", str(root / raw)]
            cmd += ["--output", str(root / shards), "--no-progress", *_flags(pre)]
            subprocess.run(cmd, check=True)


def _flags(pre: Any) -> list[str]:
    """``avsa preprocess`` flags for the clip settings of ``pre``."""
    width, height = pre.video_size
    return ["--clip-seconds", str(pre.clip_seconds), "--size", f"{width}x{height}", "--fps", str(pre.fps)]


def preprocess_config(plan: Plan, base: Config) -> Any:
    """Preprocessing of the scenes into clips as long as the scenes: one clip per scene, so no batch
    can hold two clips of one scene (a false negative of both pretext tasks)."""
    data = plan.data
    return replace(base.preprocess, clip_seconds=data.seconds, video_size=data.size, fps=data.fps)


def steps_per_pass(plan: Plan, cfg: Config) -> int:
    """Optimizer steps in one pass over the training shards."""
    from dataloading.shards import list_shards

    samples = sum(s.samples for s in list_shards(cfg.data.url, cfg.storage))
    return max(1, samples // (cfg.data.batch_size * cfg.train.processes))


def run_unit(plan: Plan, unit: Unit, cfg: Config, suite: Any, baselines: Any) -> Any:
    """Train (or resume) and evaluate one unit; returns its report, which is also saved."""
    from cluster.launch import run_local
    from evaluation.suite import evaluate_checkpoint, report_to_json
    from trainer.checkpoint import resolve

    code = run_local(cfg, resume="auto")
    if code != 0:
        raise RuntimeError(f"training {unit} failed (exit {code}); rerun to resume it")
    checkpoint = resolve("latest", cfg.train.checkpoint_url, cfg.storage)
    assert checkpoint is not None
    report = evaluate_checkpoint(checkpoint, suite, cfg.storage, baselines)
    (unit.folder(plan) / REPORT).write_text(json.dumps(report_to_json(report)))
    return report


def run(plan: Plan, base: Config | None = None, on_unit: Callable[[Unit, Any], None] | None = None) -> dict:
    """Run (or continue) the experiment; returns ``{"rows", "markdown", "csv", "seconds"}``."""
    from evaluation.suite import Baselines, report_from_json

    started = time.time()
    base = base or load_config()
    make_data(plan, base)
    labeled = plan.folder / "data" / "eval"
    suites = {
        world: replace(
            base.eval,
            clips_url=str(plan.data_folder(world) / "shards-heldout"),
            classification_url=str(labeled / "classification") if plan.data.labeled_sets else "",
            doa_url=str(labeled / "doa") if plan.data.labeled_sets else "",
            device="cpu",
        )
        for world in plan.worlds
    }
    todo = units(plan)
    progress = Progress(plan, len(todo))
    baselines = Baselines()
    reports: dict[Unit, Any] = {}
    unit_seconds: list[float | None] = []
    per_pass: dict[World, int] = {}
    for unit in todo:
        saved, timing = unit.folder(plan) / REPORT, unit.folder(plan) / TIMING
        if saved.exists():
            report = report_from_json(json.loads(saved.read_text()))
            progress.record(unit, None, "done before")
        else:
            if unit.world not in per_pass:
                per_pass[unit.world] = steps_per_pass(plan, arm_config(plan, unit, 1))
            cfg = arm_config(plan, unit, per_pass[unit.world])
            t0 = time.time()
            report = run_unit(plan, unit, cfg, suites[unit.world], baselines)
            took = time.time() - t0
            timing.write_text(f"{took:.1f}\n")
            progress.record(unit, took, _headline(report))
        unit_seconds.append(float(timing.read_text()) if timing.exists() else None)
        reports[unit] = report
        if on_unit is not None:
            on_unit(unit, report)
    return summarise(plan, reports, time.time() - started, unit_seconds)


def _headline(report: Any) -> str:
    """The primary metric of every task, for the progress line."""
    from evaluation.suite import cell

    return ", ".join(
        f"{r.task} {cell(r.scores['model'][r.primary], r.primary)}"
        for r in report.results
        if "model" in r.scores
    )


def pool_world(plan: Plan, world: World, reports: Mapping[str, Sequence[Any]]) -> list[Any]:
    """The rows of ``world``: its arms over their seeds (``reports`` by arm), then the plan's differences
    between them. The untrained arm's values are the random-init scores in a trained arm's reports."""
    from evaluation.aggregate import ArmRuns, pool

    if not reports:
        return []
    sources = {arm: ArmRuns(runs) for arm, runs in reports.items()}
    if "random_init" in plan.arms_in(world):
        reference = next(a for a in ("curriculum", *reports) if a in reports)
        sources = {"random_init": ArmRuns(reports[reference], "random_init"), **sources}
    ordered = {arm: sources[arm] for arm in plan.arms_in(world) if arm in sources}
    return pool(ordered, [d for d in plan.differences if d[0] in ordered and d[1] in ordered])


def in_world(world: World, arm: str) -> str:
    """``easy/curriculum`` for an arm, ``easy/curriculum - easy/avc_only`` for a difference."""
    return " - ".join(f"{world}/{name}" for name in arm.split(" - "))


def summarise(
    plan: Plan, reports: Mapping[Unit, Any], seconds: float, unit_seconds: Sequence[float | None] = ()
) -> dict:
    """Pool the reports and write the results (markdown, CSV, plot) to ``plan.results`` and MLflow:
    a table per world, and in the CSV, the plot and MLflow every arm named ``<world>/<arm>``.
    ``seconds`` is this run's wall time, ``unit_seconds`` what each unit took to train and evaluate
    (None where it was not recorded), whichever run did it."""
    from evaluation.aggregate import to_csv, to_markdown
    from evaluation.plots import arm_comparison, png_bytes

    sections, rows = [], []
    for world in plan.worlds:
        by_arm: dict[str, list[Any]] = {}
        for unit, report in reports.items():
            if unit.world == world:
                by_arm.setdefault(unit.arm, []).append(report)
        if world_rows := pool_world(plan, world, by_arm):
            sections.append(f"## The {world} world\n\n{to_markdown(world_rows)}")
            rows += [replace(r, arm=in_world(world, r.arm)) for r in world_rows]
    markdown, table = "\n".join(sections), to_csv(rows)
    results = Path(plan.results)
    results.mkdir(parents=True, exist_ok=True)
    files = [results / f"{plan.name}.{ext}" for ext in ("md", "csv", "png")]
    files[0].write_text(_page(plan, markdown, seconds, unit_seconds) + plateau_table(plan))
    files[1].write_text(table)
    files[2].write_bytes(png_bytes(arm_comparison(arm_estimates(rows))))
    run_id = log_summary(plan, rows, files)
    return {"rows": rows, "markdown": markdown, "csv": table, "seconds": seconds, "run_id": run_id}


def arm_estimates(rows: Sequence[Any]) -> dict[tuple[str, str], list[tuple[str, Any]]]:
    """The arms' rows (no differences) by (task, metric), arms in table order, for the figure."""
    out: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for r in rows:
        if " - " not in r.arm:
            out.setdefault((r.task, r.metric), []).append((r.arm, r.estimate))
    return out


def log_summary(plan: Plan, rows: Sequence[Any], files: Sequence[Path]) -> str:
    """One MLflow run in experiment ``plan.name`` of the plan's store: every row as the metrics
    ``<arm>/<task>/<metric>`` (the mean) and ``…/ci_low``, ``…/ci_high`` (a difference ``A - B`` is named
    ``A_minus_B``), and ``files`` as artifacts. Returns the run's id."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(plan))
    found = client.get_experiment_by_name(plan.name)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(plan.name, (plan.folder / "mlartifacts").resolve().as_uri())
    )
    run_id = client.create_run(experiment_id, run_name=f"{plan.name}-summary").info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for r in rows:
        key = f"{r.arm.replace(' - ', '_minus_')}/{r.task}/{r.metric}"
        for suffix, value in (
            ("", r.estimate.mean),
            ("/ci_low", r.estimate.low),
            ("/ci_high", r.estimate.high),
        ):
            metrics.append(Metric(key + suffix, float(value), now, 0))
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def left_plateau(plan: Plan, unit: Unit) -> dict[str, int]:
    """The step at which each stage's loss of ``unit`` first fell 0.05 nats below chance, from its last
    checkpoint's plateau watchdog (:class:`trainer.health.PlateauWatchdog`); a stage it never left is
    missing."""
    from trainer.checkpoint import read_meta, resolve

    url = resolve("latest", str(unit.folder(plan) / "checkpoints"), None)
    watchdog = read_meta(url).get("watchdog") if url else None
    return {stage: int(step) for stage, step in (watchdog or {}).get("left_at", {}).items()}


def plateau_table(plan: Plan) -> str:
    """A markdown table: for every trained unit, the step each of its stages left its plateau ("never":
    it did not within the budget; "–": the arm does not train that stage)."""
    rows = ["| world | arm | seed | AVC left at step | AVSA left at step |", "|---|---|---|---|---|"]
    for unit in units(plan):
        stages = {"avc": ("avc",), "avsa": ("avsa",), "curriculum": ("avc", "avsa")}[
            plan.arms[unit.arm].stages
        ]
        if not (unit.folder(plan) / REPORT).exists():
            continue
        left = left_plateau(plan, unit)
        cells = [str(left.get(stage, "never")) if stage in stages else "–" for stage in ("avc", "avsa")]
        rows.append(f"| {unit.world} | {unit.arm} | {unit.seed} | {cells[0]} | {cells[1]} |")
    return (
        "\n\n## When each run left its plateau\n\nThe first logged step at which the stage's training loss "
        "(mean over 10 steps) fell 0.05 nats below chance, ln of its candidates (a curriculum's AVSA stage "
        "counts from the run's first step).\n\n" + "\n".join(rows) + "\n"
    )


def _page(plan: Plan, markdown: str, seconds: float, unit_seconds: Sequence[float | None]) -> str:
    """The results page: what was run, how long it took, the pooled table."""
    seeds = ", ".join(map(str, plan.seeds))
    known = [s for s in unit_seconds if s is not None]
    # A run that only pools earlier units trains nothing: its own time says nothing of the experiment's.
    took = f"{len(known)} units trained and evaluated in {sum(known) / 60:.0f} minutes"
    if len(known) < len(unit_seconds):
        took += f" ({len(unit_seconds) - len(known)} more without a recorded time)"
    return (
        f"# {plan.name}: results\n\n"
        f"`avsa experiment` with `cluster/experiments/{plan.name}.yaml`: {plan.data.scenes} training and "
        f"{plan.data.held_out_scenes} held-out scenes of {plan.data.seconds:g} s in each world "
        f"({', '.join(plan.worlds)}), {plan.steps} optimizer steps per trained arm, seeds {seeds}; "
        f"{took} on this machine, pooled by a run of "
        f"{seconds / 60:.1f} minutes.\n\n{markdown}"
    )
