"""Experiments open as model training in the MLflow UI: the training experiment carries the kind tag
(new ones and existing ones without a kind), and the links AVSA prints ask for the model-training
layout, in terms the real server's UI understands."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from mlflow.tracking import MlflowClient

from cluster.stack import Stack
from trainer.config import load_config
from trainer.data import TINY
from trainer.mlflow_ui import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, MODEL_TRAINING_VIEW, ui_url
from trainer.tracking import Tracker

pytestmark = pytest.mark.integration


def _track(uri: str, experiment: str) -> Tracker:
    """A rank-0 tracker of a one-process job, as training makes it, with a few metric steps."""
    cfg = load_config(None, {**TINY, "tracking.uri": uri, "tracking.experiment": experiment})
    tracker = Tracker(cfg, rank=0, world_size=1)
    for step in range(1, 4):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.finish()
    return tracker


def test_training_creates_a_model_training_experiment_and_logs_its_link(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    name = f"ui-new-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.INFO, logger="trainer.tracking")
    tracker = _track(uri, name)
    experiment = client.get_experiment_by_name(name)
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND
    assert client.get_run(tracker.run_id).info.experiment_id == experiment.experiment_id
    (link,) = re.findall(r"MLflow run: (\S+)", caplog.text)
    assert link == ui_url(uri, experiment.experiment_id, tracker.run_id)
    fragment = urlsplit(link).fragment  # the UI routes inside the fragment: #/experiments/…?query
    assert fragment.startswith(f"/experiments/{experiment.experiment_id}/runs/{tracker.run_id}/")
    assert parse_qs(fragment.split("?", 1)[1])["workflowType"] == [MODEL_TRAINING_VIEW["workflowType"]]


def test_an_existing_experiment_without_a_kind_gets_one_and_a_chosen_kind_stays(stack: Stack) -> None:
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    untagged, chosen = (f"ui-{what}-{uuid.uuid4().hex[:8]}" for what in ("untagged", "chosen"))
    client.create_experiment(untagged)  # as an older AVSA, or a user by hand, made it
    client.create_experiment(chosen, tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment_by_name(untagged).tags
    _track(uri, untagged)
    _track(uri, chosen)
    assert client.get_experiment_by_name(untagged).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment_by_name(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_servers_ui_knows_the_view_parameter_and_the_kind(stack: Stack) -> None:
    """The links and the tag are only worth something while the UI the server ships reads them: an
    MLflow upgrade that renames either fails here rather than silently opening the GenAI view again."""
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    index = requests.get(f"{uri}/", timeout=30)
    index.raise_for_status()
    (main_js,) = re.findall(r'src="([^"]*/main\.[0-9a-f]+\.js)"', index.text)
    bundle = requests.get(f"{uri}/{main_js}", timeout=60)
    bundle.raise_for_status()
    for literal in (
        "workflowType",
        MODEL_TRAINING_VIEW["workflowType"],
        EXPERIMENT_KIND_TAG,
        MODEL_TRAINING_KIND,
    ):
        assert f'"{literal}"' in bundle.text, f"MLflow's UI no longer mentions {literal!r}"


def test_a_database_store_gets_no_ui_link_but_the_command_that_browses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.INFO, logger="trainer.tracking")
    tracker = _track(uri, "local")
    assert "/#/" not in caplog.text
    assert (
        f"MLflow run {tracker.run_id} in {uri} (browse: mlflow ui --backend-store-uri {uri})" in caplog.text
    )
