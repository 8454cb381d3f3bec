"""Credentials in the config: one rule decides, every writer masks them, saved configs load back without."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.launch import config_overrides
from tests.helpers import Payload
from trainer import safe_load
from trainer.checkpoint import rng_state
from trainer.config import Config, dump_config, load_config, save_config
from trainer.credentials import ENVIRONMENT, FROM_CONFIG, is_secret, redacted, secret_env
from trainer.tracking import public_params
from trainer.typed_config import flatten


def test_the_config_trees_credentials_are_the_storage_keys_and_each_can_travel_by_environment() -> None:
    secrets = {k for k in flatten(Config()) if is_secret(k)}
    assert secrets == {"storage.access_key_id", "storage.secret_access_key"}
    assert secrets == set(ENVIRONMENT)  # a launcher can hand each to another process
    for key in ("train.checkpoint_url", "tracking.uri", "stack.s3_port", "data.n_fft", "model.embed_dim"):
        assert not is_secret(key)
    for key in ("mlflow.password", "x.auth_token", "a.client_secret", "b.api_key", "c.credentials"):
        assert is_secret(key)


def test_markers_say_where_each_credential_came_from() -> None:
    cfg = load_config(None, {"storage.access_key_id": "AKIDFLAG", "storage.secret_access_key": "s3cr3t"})
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    storage = redacted(cfg, env)["storage"]
    assert storage["access_key_id"] == FROM_CONFIG
    assert storage["secret_access_key"] == "<secret not saved: from the environment ($AWS_SECRET_ACCESS_KEY)>"
    unset = redacted(Config(), {"AWS_ACCESS_KEY_ID": "AKIDENV"})["storage"]
    assert unset["access_key_id"].endswith("($AWS_ACCESS_KEY_ID)>") and unset["secret_access_key"] is None
    assert secret_env(cfg) == {"AWS_ACCESS_KEY_ID": "AKIDFLAG", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), min_size=8, max_size=40))
def test_no_writer_lets_a_credential_through(tail: str) -> None:
    secret = f"CANARY{tail}"
    cfg = load_config(None, {"storage.secret_access_key": secret, "storage.access_key_id": f"ID{secret}"})
    assert secret not in dump_config(cfg)
    assert secret not in repr(public_params(cfg))
    assert not any(secret in arg for arg in config_overrides(cfg))
    assert secret in dump_config(cfg, show_secrets=True)


def test_a_saved_config_loads_back_equal_except_its_credentials(tmp_path: Path) -> None:
    cfg = load_config(None, {"storage.secret_access_key": "hush-hush", "train.lr": 3e-4})
    save_config(cfg, tmp_path / "saved.yaml")
    text = (tmp_path / "saved.yaml").read_text()
    assert "hush-hush" not in text and FROM_CONFIG in text
    back = load_config(tmp_path / "saved.yaml")
    assert back.storage.secret_access_key is None  # the reader's own flags or environment supply it
    assert back.train == cfg.train and back.data == cfg.data


def test_config_show_masks_credentials_unless_asked(tmp_path: Path) -> None:
    config = tmp_path / "creds.yaml"
    config.write_text("storage:\n  secret_access_key: from-a-file-1234\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def show(*extra: str) -> str:
        cmd = [sys.executable, "-m", "cluster.cli", "config", "show", "--config", str(config), *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120).stdout

    masked = show()
    assert "from-a-file-1234" not in masked and FROM_CONFIG in masked
    assert "secret_access_key: from-a-file-1234" in show("--show-secrets")


def test_the_weights_only_loader_reads_rng_state_and_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    torch.save({"rng": rng_state(), "source": {"epoch": 1, "index": 2}}, tmp_path / "rank_0.pt")
    own = safe_load.load(str(tmp_path / "rank_0.pt"))
    assert torch.equal(own["rng"]["torch"], torch.get_rng_state()) and own["source"]["index"] == 2

    control, marker = tmp_path / "control-ran", tmp_path / "payload-ran"
    torch.save({"rng": Payload(str(control))}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is real: it runs when allowed
    assert control.exists()
    (tmp_path / "evil").mkdir()
    torch.save({"rng": Payload(str(marker))}, tmp_path / "evil" / "rank_0.pt")
    with pytest.raises(safe_load.UnsafeCheckpointError, match=r"evil/rank_0\.pt was refused.*makedirs"):
        safe_load.verify(str(tmp_path / "evil"))
    assert not marker.exists()
