"""Shared fixtures. Integration fixtures start real services with the product's own stack code
(`cluster.stack`) on free ports and stop them by PID when the session ends."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cluster.stack import Stack, free_stack_config

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Before any test imports ray: otherwise a driver swaps 127.0.0.1 for the machine's address
# and cannot join the loopback-only heads the tests start.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray reads its auth mode once, when ray._raylet is first imported (collecting a test module that
# imports ray does it). Every head the tests start uses tokens, so the mode is pinned to that before
# any import; the token itself is read later, from the environment each fixture sets.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real stack (S3 + MLflow + Ray) for the whole test session."""
    running = Stack(free_stack_config(tmp_path_factory.mktemp("stack")))
    running.up()
    # The head has token auth: in-process Ray clients (ray.init, the job client) read it from here.
    auth = running.ray_auth_env()
    before = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    reset_ray_token_cache()
    try:
        yield running
    finally:
        running.down()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_ray_token_cache()


@pytest.fixture(scope="module")
def ray_head(stack: Stack) -> Iterator[str]:
    """This module's driver connected to the stack's Ray head; yields its address."""
    import ray
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        pytest.skip(
            "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; run this module alone"
        )
    address = f"127.0.0.1:{stack.cfg.ray_port}"
    ray.init(address=address)
    yield address
    ray.shutdown()


def reset_ray_token_cache() -> None:
    """Make in-process Ray clients read the token from the environment again (Ray caches it)."""
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()
