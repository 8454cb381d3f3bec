"""Which checkpoint URLs the evaluation service trusts: whole path segments under a configured root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.service import is_trusted


def test_only_urls_under_a_root_are_trusted() -> None:
    roots = ["s3://bucket/runs", "/data/ckpt/"]
    assert is_trusted("s3://bucket/runs/a/step_00000002", roots)
    assert is_trusted("s3://bucket/runs", roots)
    assert is_trusted("file:///data/ckpt/step_00000004", roots)
    assert not is_trusted("s3://bucket/runs-evil/step_00000002", roots)  # a look-alike prefix
    assert not is_trusted("s3://bucket/runs/../evil/step_00000002", roots)  # climbs out
    assert not is_trusted("s3://other/runs/step_00000002", roots)
    assert not is_trusted("/data/ckpt/../../etc/step_00000002", roots)
    assert not is_trusted("s3://bucket/runs/step", [])  # nothing configured: nothing trusted


def test_a_relative_root_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_trusted(os.path.join(tmp_path, ".avsa", "checkpoints", "step_00000002"), [".avsa/checkpoints"])
    assert not is_trusted(os.path.join(tmp_path, "elsewhere", "step_00000002"), [".avsa/checkpoints"])
