"""The typed config tree: paper defaults, YAML, dotted overrides, clear errors, saving resolved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from trainer.config import LOCAL_TRACKING, Config, TrackingConfig, load_config, save_config
from trainer.typed_config import ConfigError, flatten, parse_overrides


def test_defaults_follow_the_papers() -> None:
    cfg = Config()
    assert (cfg.data.viewpoints, cfg.data.frames, cfg.data.crop_size) == (4, 8, 112)
    assert (cfg.data.sample_rate, cfg.data.hop, cfg.data.n_fft, cfg.data.n_mels) == (24000, 240, 512, 128)
    assert cfg.data.sample_rate / cfg.data.hop == 100  # 100 spectrogram frames per second
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.tau) == (1e-4, 1e-5, 0.07)
    assert (cfg.train.avc_epochs, cfg.train.avsa_epochs) == (50, 50)
    assert cfg.model.embed_dim == 128 and cfg.stack.host == "127.0.0.1"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\n  zero_stage: 2\ndata:\n  feature: cardioids\n")
    cfg = load_config(path, ["--train.lr", "3e-4", "--data.fov_deg=[30, 60]", "--model.preset", "tiny"])
    assert cfg.train.lr == pytest.approx(3e-4)  # the command line wins over the file
    assert cfg.train.zero_stage == 2 and cfg.data.feature == "cardioids"
    assert cfg.data.fov_deg == (30.0, 60.0) and cfg.model.preset == "tiny"


def test_saved_resolved_config_loads_back_equal(tmp_path: Path) -> None:
    cfg = load_config(None, {"train.lr": 5e-4, "data.viewpoints": 6, "storage.endpoint_url": "http://x:1"})
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_unknown_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        load_config(None, ["--train.lrr", "1"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(None, ["--trian.lr", "1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--train.lr", "fast"], "train.lr: expected a number"),
        (["--data.viewpoints", "2.5"], "data.viewpoints: expected an integer"),
        (["--data.resampled", "maybe"], "data.resampled: expected true/false"),
        (["--data.feature", "wavelets"], "data.feature: expected one of"),
        (["--data.fov_deg", "[1, 2, 3]"], "data.fov_deg: expected 2 items"),
        (["--train.zero_stage", "4"], r"train.zero_stage: expected one of \[0, 1, 2, 3\]"),
        (["--train.precision", "fp16"], "train.precision: expected one of"),
        (["--train.lr"], "has no value"),
        (["train.lr", "1"], "expected an override like"),
    ],
)
def test_wrong_values_are_refused_clearly(override: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  viewpoints: four\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.viewpoints: expected an integer"):
        load_config(path)


@given(lr=st.floats(min_value=1e-8, max_value=10, allow_nan=False), k=st.integers(1, 64), flag=st.booleans())
def test_any_valid_override_round_trips_through_yaml(lr: float, k: int, flag: bool) -> None:
    argv = ["--train.lr", repr(lr), "--data.viewpoints", str(k), "--data.resampled", str(flag).lower()]
    cfg = load_config(None, parse_overrides(argv))
    assert (cfg.train.lr, cfg.data.viewpoints, cfg.data.resampled) == (lr, k, flag)
    assert yaml.safe_load(yaml.safe_dump(flatten(cfg)))["train.lr"] == lr


def test_cli_config_show_prints_the_resolved_tree() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "config", "show", "--train.lr", "3e-4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert yaml.safe_load(out)["train"]["lr"] == pytest.approx(3e-4)
    bad = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "config", "show", "--train.lrr", "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "did you mean 'train.lr'" in bad.stderr


@pytest.mark.parametrize("argv", [["--tracking.uri", ""], ["--tracking.uri="]])
def test_an_empty_override_is_the_empty_string_both_ways_it_is_written(argv: list[str]) -> None:
    assert parse_overrides(argv) == {"tracking.uri": ""}
    assert load_config(None, parse_overrides(argv)).tracking.uri == ""
    with pytest.raises(ConfigError, match=re.escape("train.lr: expected a number, got ''")):
        load_config(None, parse_overrides(["--train.lr="]))


def test_every_command_loads_and_one_that_cannot_stops_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster import cli

    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {name.replace("_", "-") for name in cli.COMMANDS}
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


def test_an_empty_tracking_uri_takes_mlflow_tracking_uri_then_the_local_file_and_off_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert TrackingConfig().resolved() == (
        LOCAL_TRACKING,
        "neither tracking.uri nor MLFLOW_TRACKING_URI is set",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")  # what `eval $(avsa stack env)` sets
    assert TrackingConfig().resolved()[0] == "http://10.0.0.5:5000"
    assert TrackingConfig(uri="sqlite:///runs.db").resolved() == ("sqlite:///runs.db", "tracking.uri")
    assert TrackingConfig(uri="off").resolved()[0] == ""  # benchmarks and unit tests
