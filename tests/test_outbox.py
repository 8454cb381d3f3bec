"""The tracking outbox: which failures it waits out, its backoff, and its order through the spill file
(against a real MLflow store; outages of a real server are in test_tracking_outage.py)."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions as boto
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from dataloading.storage import transient
from trainer.outbox import Backoff, Outbox, is_transient


def test_only_failures_that_can_pass_are_waited_out() -> None:
    assert is_transient(MlflowException("API request to http://h/api failed with exception ... refused"))
    assert is_transient(ConnectionRefusedError()) and is_transient(requests.ConnectionError())
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "503"}))
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert not is_transient(FileNotFoundError("samples/step_00000001.png"))
    assert transient(boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:8333"))
    slow = boto.ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "Get"
    )
    denied = boto.ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get"
    )
    assert transient(slow) and not transient(denied) and not transient(FileNotFoundError())


@given(st.floats(0.01, 5.0), st.floats(1.0, 60.0), st.integers(1, 12))
def test_backoff_doubles_up_to_its_cap_with_a_quarter_of_jitter(first: float, cap: float, tries: int) -> None:
    backoff = Backoff(first, max(cap, first))
    for n in range(tries):
        nominal = min(first * 2**n, max(cap, first))
        assert 0.75 * nominal <= backoff.delay() <= 1.25 * nominal
    backoff.reset()
    assert 0.75 * first <= backoff.delay() <= 1.25 * first


@pytest.mark.parametrize("memory", [3, 10_000])
def test_records_arrive_once_and_in_order_through_the_spill_file(tmp_path: Path, memory: int) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("outbox")).info.run_id
    outbox = Outbox(client, run_id, "sqlite", tmp_path / "backlog", memory=memory)
    for step in range(1, 61):
        outbox.put({"op": "metrics", "step": step, "ts": step, "values": {"loss": float(step)}})
        outbox.put({"op": "tag", "key": "checkpoint.step", "value": str(step)})
    outbox.put({"op": "end", "status": "FINISHED"})
    assert outbox.close(timeout_s=60) is None  # all delivered: no backlog file
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 61))
    run = client.get_run(run_id)
    assert run.data.tags["checkpoint.step"] == "60" and run.info.status == "FINISHED"  # the last tag won
    assert not (tmp_path / "backlog" / run_id).exists()
