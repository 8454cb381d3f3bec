"""Evaluation markers (when an interrupted evaluation may be redone) and the results table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np

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
    def report(step: int, avsa: float, err: float) -> Report:
        results = [
            TaskResult("avsa_bin", "acc", {"model": {"acc": avsa}, "random_init": {"acc": 0.5}}),
            TaskResult(
                "doa",
                "mean_error_deg",
                {
                    "model": {"mean_error_deg": err, "acc20": 0.25},
                    "random_init": {"mean_error_deg": 90.0, "acc20": 0.0},
                    "intensity": {"mean_error_deg": 12.5, "acc20": 0.75},
                },
                directions=np.zeros((1, 2)),
            ),
        ]
        return Report(f"ckpt/{step}", step, "run", results, 1.0)

    table = format_table({"AVC stage": report(40, 0.6, 50.0), "AVSA stage": report(80, 0.8125, 30.0)})
    lines = table.splitlines()
    header = "method avsa_bin acc% ↑ doa acc20% ↑ doa mean_error° ↓"
    assert lines[0].split() == header.split()
    rows = {line[:12].strip(): line[12:].split() for line in lines[2:]}
    assert rows == {
        "AVC stage": ["60.0", "25.0", "50.0"],
        "AVSA stage": ["81.2", "25.0", "30.0"],
        "random init": ["50.0", "0.0", "90.0"],
        "intensity": ["-", "75.0", "12.5"],
    }
