"""The local stack of real services on 127.0.0.1: SeaweedFS S3, an MLflow server, a Ray head.

`avsa stack up|status|down` and the integration-test fixtures use this same code.
State (endpoints, PIDs, generated S3 credentials) lives in ``<state_dir>/state.json``;
``down`` stops exactly the processes recorded there, by PID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from cluster import processes
from cluster.processes import ManagedProcess
from dataloading.config import StorageConfig
from trainer.config import StackConfig

log = logging.getLogger(__name__)

SERVICES = ("s3", "mlflow", "ray")
# SeaweedFS serves gRPC on every HTTP port + 10000 (its fixed convention).
WEED_GRPC_OFFSET = 10000


class StackError(RuntimeError):
    """The stack could not start or is not in the expected state; the message says what to do."""


@dataclass
class StackState:
    """What ``up`` started: enough for ``status``, ``down`` and clients in other processes."""

    host: str
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    s3_access_key: str = ""
    s3_secret_key: str = ""
    bucket: str = ""

    @classmethod
    def read(cls, path: Path) -> StackState:
        data = json.loads(path.read_text())
        data["services"] = {k: ManagedProcess(**v) for k, v in data["services"].items()}
        return cls(**data)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)  # holds the S3 secret
        tmp.replace(path)


class Stack:
    """Start, inspect and stop the local services described by a :class:`StackConfig`."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir).absolute()
        self.state_path = self.state_dir / "state.json"

    # ----- queries -------------------------------------------------------------------------
    def state(self) -> StackState | None:
        """The recorded state, or None if no stack was started from this state dir."""
        return StackState.read(self.state_path) if self.state_path.exists() else None

    def status(self) -> dict[str, dict[str, object]]:
        """Per service: pid, endpoint, whether the process is alive and its health check passes."""
        state = self.state()
        if state is None:
            return {}
        report = {}
        for name, proc in state.services.items():
            alive = proc.alive()
            report[name] = {
                "pid": proc.pid,
                "endpoint": state.endpoints[name],
                "alive": alive,
                "healthy": alive and self._healthy(name, state),
                "log": proc.log,
            }
        return report

    def storage(self) -> StorageConfig:
        """Storage settings that reach this stack's S3 server."""
        state = self._require_state()
        return StorageConfig(
            endpoint_url=state.endpoints["s3"],
            access_key_id=state.s3_access_key,
            secret_access_key=state.s3_secret_key,
            region="us-east-1",
        )

    def client_env(self) -> dict[str, str]:
        """Environment variables that point clients (s3fs, mlflow, ray job submit) at this stack."""
        state = self._require_state()
        env = {}
        if "s3" in state.services:
            env |= {
                "AWS_ENDPOINT_URL": state.endpoints["s3"],
                "AWS_ACCESS_KEY_ID": state.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": state.s3_secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AVSA_BUCKET": state.bucket,
            }
        if "mlflow" in state.services:
            env["MLFLOW_TRACKING_URI"] = state.endpoints["mlflow"]
        if "ray" in state.services:
            env["RAY_ADDRESS"] = state.endpoints["ray"]
        return env

    # ----- lifecycle -----------------------------------------------------------------------
    def up(self, services: Sequence[str] = SERVICES) -> StackState:
        """Start ``services``, wait until each is healthy, record them; roll back on failure."""
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StackError(f"unknown services {sorted(unknown)}; choose from {list(SERVICES)}")
        existing = self.state()
        if existing is not None:
            if any(p.alive() for p in existing.services.values()):
                raise StackError(
                    f"a stack from {self.state_dir} is already running; "
                    "see `avsa stack status`, or stop it with `avsa stack down`"
                )
            self.state_path.unlink()  # left over from a crashed run: nothing of it is alive
        self._check_ports(services)
        state = StackState(
            host=self.cfg.host,
            s3_access_key="AVSA" + secrets.token_hex(8).upper(),
            s3_secret_key=secrets.token_urlsafe(30),
            bucket=self.cfg.bucket,
        )
        started = time.monotonic()
        try:
            for name in services:
                proc, endpoint = getattr(self, f"_start_{name}")(state)
                state.services[name], state.endpoints[name] = proc, endpoint
                state.write(self.state_path)  # record each PID at once so `down` can always stop it
            self._wait_healthy(state)
            if "s3" in services:
                self._create_bucket(state)
        except BaseException:
            self.down()
            raise
        log.info("stack up in %.1f s: %s", time.monotonic() - started, state.endpoints)
        return state

    def down(self) -> list[str]:
        """Stop every recorded process (by PID) and forget the state; returns what was stopped."""
        state = self.state()
        if state is None:
            return []
        running = {name: proc for name, proc in state.services.items() if proc.alive()}
        processes.stop(list(running.values()))
        self.state_path.unlink(missing_ok=True)
        return list(running)

    # ----- services ------------------------------------------------------------------------
    def _ports(self, name: str) -> list[int]:
        c = self.cfg
        if name == "s3":
            http = [c.s3_port, c.weed_master_port, c.weed_volume_port, c.weed_filer_port]
            return http + [p + WEED_GRPC_OFFSET for p in http]
        if name == "mlflow":
            return [c.mlflow_port]
        return [c.ray_port, c.ray_dashboard_port]

    def _check_ports(self, services: Sequence[str]) -> None:
        for name in services:
            for port in self._ports(name):
                if processes.port_in_use(self.cfg.host, port):
                    raise StackError(
                        f"port {port} on {self.cfg.host} (needed by {name}) is taken by "
                        f"{processes.port_holder(port)}; stop it or choose other ports "
                        f"(e.g. --stack.{self._port_key(name, port)} N)"
                    )

    def _port_key(self, name: str, port: int) -> str:
        keys = {"s3": "s3_port", "mlflow": "mlflow_port", "ray": "ray_port"}
        for key in ("weed_master_port", "weed_volume_port", "weed_filer_port", "ray_dashboard_port"):
            if getattr(self.cfg, key) in (port, port - WEED_GRPC_OFFSET):
                return key
        return keys[name]

    def _start_s3(self, state: StackState) -> tuple[ManagedProcess, str]:
        c = self.cfg
        data = self.state_dir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "avsa",
                    "credentials": [{"accessKey": state.s3_access_key, "secretKey": state.s3_secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_json = self.state_dir / "s3.json"
        s3_json.write_text(json.dumps(identities))
        s3_json.chmod(0o600)
        cmd = [
            processes.executable("weed"),
            "server",
            f"-ip={c.host}",
            f"-ip.bind={c.host}",
            f"-dir={data}",
            f"-master.port={c.weed_master_port}",
            f"-volume.port={c.weed_volume_port}",
            "-master.volumeSizeLimitMB=1024",  # small volumes: a demo disk is not pre-filled
            "-volume.max=0",  # as many volumes as the disk allows
            "-filer",
            f"-filer.port={c.weed_filer_port}",
            "-s3",
            f"-s3.port={c.s3_port}",
            f"-s3.config={s3_json}",  # identities present => every request must be signed
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        proc = processes.spawn("s3", cmd, self.state_dir / "logs" / "seaweedfs.log")
        return proc, f"http://{c.host}:{c.s3_port}"

    def _start_mlflow(self, state: StackState) -> tuple[ManagedProcess, str]:
        c = self.cfg
        cmd = [
            processes.executable("mlflow"),
            "server",
            "--host",
            c.host,
            "--port",
            str(c.mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.state_dir / "mlartifacts"),
            "--serve-artifacts",
            "--workers",
            "1",
        ]
        env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
        proc = processes.spawn("mlflow", cmd, self.state_dir / "logs" / "mlflow.log", env)
        return proc, f"http://{c.host}:{c.mlflow_port}"

    def _start_ray(self, state: StackState) -> tuple[ManagedProcess, str]:
        c = self.cfg
        # Ray's unix sockets live under the temp dir and must stay short (108-byte path limit).
        tag = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:8]
        cmd = [
            processes.executable("ray"),
            "start",
            "--head",
            "--block",  # stays in the foreground: its PID is the root of the Ray process tree
            f"--node-ip-address={c.host}",
            f"--port={c.ray_port}",
            "--include-dashboard=true",
            f"--dashboard-host={c.host}",
            f"--dashboard-port={c.ray_dashboard_port}",
            f"--num-cpus={c.ray_num_cpus or os.cpu_count()}",
            f"--temp-dir=/tmp/avsa-ray-{tag}",
            "--disable-usage-stats",
        ]
        env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        proc = processes.spawn("ray", cmd, self.state_dir / "logs" / "ray.log", env)
        return proc, f"http://{c.host}:{c.ray_dashboard_port}"

    # ----- health --------------------------------------------------------------------------
    def _healthy(self, name: str, state: StackState) -> bool:
        url = state.endpoints[name]
        try:
            if name == "s3":  # any HTTP answer; unsigned requests are refused with 403
                return requests.get(url, timeout=2).status_code in (200, 403)
            if name == "mlflow":
                return requests.get(f"{url}/health", timeout=2).status_code == 200
            return requests.get(f"{url}/api/version", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait_healthy(self, state: StackState) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        pending = set(state.services)
        while pending:
            for name in sorted(pending):
                proc = state.services[name]
                if not proc.alive():
                    raise StackError(
                        f"{name} exited during start-up; its log {proc.log} ends with:\n"
                        f"{processes.log_tail(proc.log)}"
                    )
                if self._healthy(name, state):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                name = sorted(pending)[0]
                raise StackError(
                    f"{name} was not healthy after {self.cfg.start_timeout_s:.0f} s "
                    f"(raise --stack.start_timeout_s); log {state.services[name].log} ends with:\n"
                    f"{processes.log_tail(state.services[name].log)}"
                )
            time.sleep(0.5)

    def _create_bucket(self, state: StackState) -> None:
        import s3fs

        opts = {
            "key": state.s3_access_key,
            "secret": state.s3_secret_key,
            "endpoint_url": state.endpoints["s3"],
            "skip_instance_cache": True,
        }

        def make() -> bool:
            fs = s3fs.S3FileSystem(**opts)
            if not fs.exists(state.bucket):
                fs.mkdir(state.bucket)
            return True

        # The S3 gateway answers before the filer behind it accepts writes; retry briefly.
        if not processes.wait_for(make, timeout_s=60):
            raise StackError(f"could not create bucket {state.bucket!r} on {state.endpoints['s3']}")

    def _require_state(self) -> StackState:
        state = self.state()
        if state is None:
            raise StackError(f"no stack is running from {self.state_dir}; start one with `avsa stack up`")
        return state
