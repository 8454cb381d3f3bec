"""Shared fixtures. Integration fixtures start real services with the product's own stack code
(`cluster.stack`) on free ports and stop them by PID when the session ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import processes
from cluster.stack import WEED_GRPC_OFFSET, Stack
from trainer.config import StackConfig

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Before any test imports ray: otherwise a driver swaps 127.0.0.1 for the machine's address
# and cannot join the loopback-only heads the tests start.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _weed_safe(port: int) -> bool:
    """True if ``port`` can serve SeaweedFS, which also needs ``port + 10000`` for gRPC."""
    return port + WEED_GRPC_OFFSET < 65536 and not processes.port_in_use("127.0.0.1", port + WEED_GRPC_OFFSET)


def free_stack_config(state_dir: Path) -> StackConfig:
    """A StackConfig on free loopback ports, so tests never collide with a user's stack."""
    taken: set[int] = set()

    def pick(needs_grpc: bool = False) -> int:
        def avoid(port: int) -> bool:
            clash = port in taken or port + WEED_GRPC_OFFSET in taken or port - WEED_GRPC_OFFSET in taken
            return clash or (needs_grpc and not _weed_safe(port))

        port = processes.free_port(avoid=avoid)
        taken.add(port)
        return port

    return StackConfig(
        state_dir=str(state_dir),
        s3_port=pick(True),
        weed_master_port=pick(True),
        weed_volume_port=pick(True),
        weed_filer_port=pick(True),
        mlflow_port=pick(),
        ray_port=pick(),
        ray_dashboard_port=pick(),
        ray_agent_port=pick(),
        ray_num_cpus=2,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real stack (S3 + MLflow + Ray) for the whole test session."""
    running = Stack(free_stack_config(tmp_path_factory.mktemp("stack")))
    running.up()
    try:
        yield running
    finally:
        running.down()
