"""Evaluation markers (when an interrupted evaluation may be redone) and the results table."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from evaluation.bootstrap import Estimate
from evaluation.markers import Marker, marker_key, this_owner
from evaluation.suite import Report, format_table
from evaluation.tasks import TaskResult


def test_marker_round_trips_through_its_tag() -> None:
    marker = Marker("failed", 2, eval_run="abc", reason="RuntimeError: bad zip")
    assert Marker.from_tag(marker.to_tag()) == marker
    assert marker_key(1000) == "eval.step_00001000"


def test_only_running_markers_without_a_live_owner_go_stale() -> None:
    now = time.time()
    host = socket.gethostname()
    live = Marker("running", 1, this_owner(), now + 60)
    assert not live.stale()
    assert Marker("running", 1, this_owner(), now - 1).stale()  # lease ran out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert Marker("running", 1, f"{host}:{dead.pid}", now + 60).stale()  # killed here: no need to wait
    assert not Marker("running", 1, f"elsewhere:{os.getpid()}", now + 60).stale()  # another host's lease
    assert Marker("running", 1, f"elsewhere:{os.getpid()}", now + 60).stale(now + 61)
    assert not Marker("done", 1).stale(now + 1e9) and not Marker("failed", 1).stale(now + 1e9)


def test_table_lists_checkpoints_then_baselines_in_percent_and_degrees() -> None:
    def est(mean: float) -> Estimate:
        return Estimate(mean, mean - 0.01, mean + 0.01, 10)

    def report(step: int, avsa: float, err: float) -> Report:
        results = [
            TaskResult(
                "avsa_bin",
                "acc",
                {"model": {"acc": est(avsa)}, "random_init": {"acc": est(0.5)}},
                {"model": {"acc": est(avsa - 0.5)}},
                chance={"acc": 0.5},
            ),
            TaskResult(
                "doa",
                "mean_error_deg",
                {
                    "model": {"mean_error_deg": est(err)},
                    "random_init": {"mean_error_deg": est(90.0)},
                    "intensity": {"mean_error_deg": est(12.5)},
                },
                {"model": {"mean_error_deg": est(err - 90.0)}},
            ),
        ]
        return Report(f"ckpt/{step}", step, "run", results, 1.0)

    table = format_table({"AVC stage": report(40, 0.6, 50.0), "AVSA stage": report(80, 0.8125, 30.0)})
    scores, differences = table.split("\n\n")

    def cells(block: str) -> list[list[str]]:
        return [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()[2:]]

    assert re.split(r"\s{2,}", scores.splitlines()[0]) == [
        "metric", "AVC stage", "AVSA stage", "random init", "intensity", "chance"
    ]  # fmt: skip
    assert cells(scores) == [
        ["avsa_bin acc% ↑", "60.0 [59.0, 61.0]", "81.2 [80.2, 82.2]", "50.0 [49.0, 51.0]", "-", "50.0"],
        [
            "doa mean_error° ↓",
            "50.0 [50.0, 50.0]",
            "30.0 [30.0, 30.0]",
            "90.0 [90.0, 90.0]",
            "12.5 [12.5, 12.5]",
            "-",
        ],
    ]
    assert cells(differences) == [
        ["avsa_bin acc% ↑", "+10.0 [+9.0, +11.0]", "+31.2 [+30.2, +32.2]"],
        ["doa mean_error° ↓", "-40.0 [-40.0, -40.0]", "-60.0 [-60.0, -60.0]"],
    ]
