"""The local stack of real services on 127.0.0.1: SeaweedFS S3, an MLflow server, a Ray head.

`avsa stack up|status|down` and the integration-test fixtures use this same code.
State (endpoints, PIDs, generated S3 credentials) lives in ``<state_dir>/state.json``;
``down`` stops exactly the processes recorded there, by PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests

from cluster import hosts as virtual_hosts
from cluster import processes
from cluster.processes import ManagedProcess
from dataloading.config import StorageConfig
from dataloading.storage import filesystem
from trainer.config import StackConfig

log = logging.getLogger(__name__)

SERVICES = ("s3", "mlflow", "ray")
# SeaweedFS serves gRPC on every HTTP port + 10000 (its fixed convention).
WEED_GRPC_OFFSET = 10000


def _weed_safe(port: int) -> bool:
    """True if ``port`` can serve SeaweedFS, which also needs ``port + 10000`` for gRPC."""
    return port + WEED_GRPC_OFFSET < 65536 and not processes.port_in_use("127.0.0.1", port + WEED_GRPC_OFFSET)


def free_stack_config(state_dir: Path) -> StackConfig:
    """A StackConfig on free loopback ports, so tests and benchmarks never collide with a user's
    stack (2 Ray CPUs per host); its state lives in ``state_dir``."""
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
    network: dict | None = None  # the virtual hosts, when the stack spans several
    ray_token: str = ""  # Ray's token authentication; empty: off
    mlflow_user: str = ""  # MLflow's basic-auth admin; empty: MLflow without authentication
    mlflow_password: str = ""

    def host_network(self) -> virtual_hosts.HostNetwork | None:
        return virtual_hosts.HostNetwork.from_dict(self.network) if self.network else None

    @classmethod
    def read(cls, path: Path) -> StackState:
        data = json.loads(path.read_text())
        data["services"] = {k: ManagedProcess(**v) for k, v in data["services"].items()}
        return cls(**data)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)  # holds the S3 secret, the Ray token and the MLflow password
        tmp.replace(path)


class Stack:
    """Start, inspect and stop the local services described by a :class:`StackConfig`."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.state_dir = Path(cfg.state_dir).absolute()
        self.state_path = self.state_dir / "state.json"
        self.token_path = self.state_dir / "ray_token"  # what Ray processes and clients read (0600)

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
        return self._storage_of(self._require_state())

    @staticmethod
    def _storage_of(state: StackState) -> StorageConfig:
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
            if state.mlflow_user:
                env |= {
                    "MLFLOW_TRACKING_USERNAME": state.mlflow_user,
                    "MLFLOW_TRACKING_PASSWORD": state.mlflow_password,
                }
        if "ray" in state.services:
            # `ray job submit` talks to the dashboard; drivers (`avsa preprocess`, ray.init) join the GCS.
            env["RAY_API_SERVER_ADDRESS"] = state.endpoints["ray"]
            env["RAY_ADDRESS"] = f"{state.host}:{self.cfg.ray_port}"
            env |= self._ray_auth_env(state)
        return env

    def ray_auth_env(self) -> dict[str, str]:
        """The part of :meth:`client_env` a Ray client (``ray job submit``, ``ray.init``, the job SDK)
        needs to authenticate; a process that talks to the head itself puts it in its own environment."""
        return self._ray_auth_env(self._require_state())

    def sign_in_hint(self) -> str:
        """Where the Ray dashboard's sign-in token is (for a browser), when token auth is on."""
        return (
            f" (sign in with the token in {self.token_path})"
            if self.ray_auth_env()["RAY_AUTH_MODE"] == "token"
            else ""
        )

    # ----- lifecycle -----------------------------------------------------------------------
    def up(self, services: Sequence[str] = SERVICES) -> StackState:
        """Start ``services``, wait until each is healthy, record them; roll back on failure."""
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StackError(f"unknown services {sorted(unknown)}; choose from {list(SERVICES)}")
        if self.running():
            self.heal(services)
            return self._require_state()
        if self.state() is not None:
            self.state_path.unlink()  # left over from a crashed run: nothing of it is alive
        state = StackState(
            host=self.cfg.host,
            s3_access_key="AVSA" + secrets.token_hex(8).upper(),
            s3_secret_key=secrets.token_urlsafe(30),
            bucket=self.cfg.bucket,
            ray_token=secrets.token_hex(32) if self.cfg.auth == "token" else "",
        )
        if self.cfg.mlflow_auth == "basic":
            state.mlflow_user, state.mlflow_password = "avsa", secrets.token_urlsafe(24)
        started = time.monotonic()
        try:
            if self.cfg.hosts > 1:
                network = virtual_hosts.create(str(self.state_dir), self.cfg.hosts)
                state.network, state.host = network.to_dict(), network.hosts[0].address
                state.write(self.state_path)  # record the namespaces at once so `down` removes them
            else:
                self._check_ports(services)  # fresh namespaces have every port free
            if state.ray_token:
                self._write_private(self.token_path, state.ray_token)
            for name in services:
                proc, endpoint = getattr(self, f"_start_{name}")(state)
                state.services[name], state.endpoints[name] = proc, endpoint
                state.write(self.state_path)  # record each PID at once so `down` can always stop it
            for worker in self._worker_hosts(state) if "ray" in services else []:
                proc, endpoint = self._start_ray_worker(state, worker)
                state.services[f"ray@{worker.name}"], state.endpoints[f"ray@{worker.name}"] = proc, endpoint
                state.write(self.state_path)
            self._wait_healthy(state)
            if "s3" in services:
                self._create_bucket(state)
        except BaseException:
            self.down()
            raise
        log.info("stack up in %.1f s: %s", time.monotonic() - started, state.endpoints)
        return state

    def running(self) -> bool:
        """True while any recorded service process is alive."""
        state = self.state()
        return state is not None and any(p.alive() for p in state.services.values())

    def heal(self, services: Sequence[str] = SERVICES) -> list[str]:
        """Restart the recorded services that are down (what a dead root left behind is stopped first)
        and start those of ``services`` the stack lacks, with the stack's credentials, ports and data;
        the live ones keep their processes. Returns what was started, in start order."""
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StackError(f"unknown services {sorted(unknown)}; choose from {list(SERVICES)}")
        state = self._require_state()
        wanted = list(dict.fromkeys([*state.services, *services]))  # the Ray head before its workers
        down = [name for name in wanted if name not in state.services or not state.services[name].alive()]
        hosts = {f"ray@{host.name}": host for host in self._worker_hosts(state)}
        for name in down:
            if name in state.services:
                processes.terminate(processes.leftovers(state.services[name]))
            if name not in hosts and state.host_network() is None:
                self._check_ports([name])
            proc, endpoint = (
                self._start_ray_worker(state, hosts[name])
                if name in hosts
                else getattr(self, f"_start_{name}")(state)
            )
            state.services[name], state.endpoints[name] = proc, endpoint
            state.write(self.state_path)
        if down:
            self._wait_healthy(state)
            if "s3" in down:
                self._create_bucket(state)
            log.info("stack healed: started %s again", ", ".join(down))
        return down

    def down(self) -> list[str]:
        """Stop every recorded process (by PID) and forget the state; returns what was stopped."""
        state = self.state()
        if state is None:
            return []
        running = {name: proc for name, proc in state.services.items() if proc.alive()}
        # SeaweedFS waits ~15 s on its way out after its volume server has closed its files (measured);
        # a kill then loses nothing (the healing test SIGKILLs it and finds its data).
        processes.stop(list(running.values()), {"s3": 2.0})
        for proc in state.services.values():  # a killed server's workers may still hold its port
            processes.terminate(processes.leftovers(proc))
        if (network := state.host_network()) is not None:
            network.destroy()
        self.state_path.unlink(missing_ok=True)
        self.token_path.unlink(missing_ok=True)
        return list(running)

    # ----- node failure drills (multi-host stacks) ---------------------------------------------
    def kill_node(self, host: str) -> list[int]:
        """SIGKILL every process of the Ray worker node on virtual host ``host`` at once, as when a
        machine loses power (no process gets to say goodbye); returns the PIDs killed."""
        return self.kill(f"ray@{host}")

    def kill(self, service: str) -> list[int]:
        """SIGKILL every process of ``service`` (``s3``, ``mlflow``, ``ray``, ``ray@<host>``) at once, as
        in a crash or a lost machine; ``avsa stack up`` (:meth:`heal`) brings it back. Returns the PIDs
        killed."""
        state = self._require_state()
        proc = state.services.get(service)
        root = proc.handle() if proc else None
        if root is None:
            raise StackError(f"service {service!r} is not running; see `avsa stack status`")
        tree = processes.process_tree(root)
        for member in tree:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(tree, timeout=10)
        return [member.pid for member in tree]

    def restart_node(self, host: str) -> None:
        """Start the Ray worker node on virtual host ``host`` again (after :meth:`kill_node`, or a
        crash) and wait until the head counts it alive; like a replacement machine joining."""
        state = self._require_state()
        name = f"ray@{host}"
        if name not in state.services:
            raise StackError(f"the stack has no host {host!r}; its Ray nodes: {sorted(state.services)}")
        if state.services[name].alive():
            raise StackError(f"the Ray node on host {host!r} is still running")
        (worker,) = [h for h in self._worker_hosts(state) if h.name == host]
        state.services[name], state.endpoints[name] = self._start_ray_worker(state, worker)
        state.write(self.state_path)
        self._wait_healthy(state)

    # ----- services ------------------------------------------------------------------------
    def _ports(self, name: str) -> list[int]:
        c = self.cfg
        if name == "s3":
            http = [c.s3_port, c.weed_master_port, c.weed_volume_port, c.weed_filer_port]
            return http + [p + WEED_GRPC_OFFSET for p in http]
        if name == "mlflow":
            return [c.mlflow_port]
        return [c.ray_port, c.ray_dashboard_port, c.ray_agent_port]

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
        for key in (
            "weed_master_port",
            "weed_volume_port",
            "weed_filer_port",
            "ray_dashboard_port",
            "ray_agent_port",
        ):
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
        self._write_private(s3_json, json.dumps(identities))
        cmd = [
            processes.executable("weed"),
            "server",
            f"-ip={state.host}",
            f"-ip.bind={state.host}",
            f"-dir={data}",
            f"-master.port={c.weed_master_port}",
            f"-volume.port={c.weed_volume_port}",
            "-master.volumeSizeLimitMB=1024",  # small volumes: a demo disk is not pre-filled
            "-volume.max=0",  # as many volumes as the disk allows
            "-volume.preStopSeconds=0",  # no 10-s goodbye to a master that stops with it
            "-filer",
            f"-filer.port={c.weed_filer_port}",
            "-s3",
            f"-s3.port={c.s3_port}",
            f"-s3.config={s3_json}",  # identities present => every request must be signed
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        proc = processes.spawn("s3", self._on_head(state, cmd), self.state_dir / "logs" / "seaweedfs.log")
        return proc, f"http://{state.host}:{c.s3_port}"

    def _start_mlflow(self, state: StackState) -> tuple[ManagedProcess, str]:
        c = self.cfg
        cmd = [
            processes.executable("mlflow"),
            "server",
            "--host",
            state.host,
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
        # Job execution would start 7 huey consumers (~230 MB and ~6 CPU-s each) for MLflow features
        # this project never uses.
        env = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if state.mlflow_user:
            cmd += ["--app-name", "basic-auth"]
            env |= self._mlflow_auth_env(state)
            # Its own user store in the state dir (MLflow's shipped ini puts it in the working dir).
            ini = self.state_dir / "mlflow_auth.ini"
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.state_dir / 'mlflow_auth.db'}\n"
                f"admin_username = {state.mlflow_user}\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        proc = processes.spawn(
            "mlflow", self._on_head(state, cmd), self.state_dir / "logs" / "mlflow.log", env
        )
        return proc, f"http://{state.host}:{c.mlflow_port}"

    def _start_ray(self, state: StackState) -> tuple[ManagedProcess, str]:
        c = self.cfg
        cmd = [
            processes.executable("ray"),
            "start",
            "--head",
            "--block",  # stays in the foreground: its PID is the root of the Ray process tree
            f"--node-ip-address={state.host}",
            f"--port={c.ray_port}",
            "--include-dashboard=true",
            f"--dashboard-host={state.host}",
            f"--dashboard-port={c.ray_dashboard_port}",
            f"--dashboard-agent-listen-port={c.ray_agent_port}",
            f"--num-cpus={c.ray_num_cpus or os.cpu_count()}",
            f"--temp-dir={self._ray_temp_dir('head')}",
            "--disable-usage-stats",
        ]
        env = self._ray_env(state)
        proc = processes.spawn("ray", self._on_head(state, cmd), self.state_dir / "logs" / "ray.log", env)
        return proc, f"http://{state.host}:{c.ray_dashboard_port}"

    def _start_ray_worker(
        self, state: StackState, host: virtual_hosts.VirtualHost
    ) -> tuple[ManagedProcess, str]:
        """A Ray worker node on ``host`` that joins the head on the first host."""
        c = self.cfg
        cmd = [
            processes.executable("ray"),
            "start",
            f"--address={state.host}:{c.ray_port}",
            "--block",
            f"--node-ip-address={host.address}",
            f"--num-cpus={c.ray_num_cpus or os.cpu_count()}",
            f"--temp-dir={self._ray_temp_dir(host.name)}",  # hosts share /tmp: keep sessions apart
            "--disable-usage-stats",
        ]
        log_path = self.state_dir / "logs" / f"ray-{host.name}.log"
        proc = processes.spawn(f"ray@{host.name}", host.command(cmd), log_path, self._ray_env(state))
        return proc, host.address

    def _ray_temp_dir(self, node: str) -> str:
        # Ray's unix sockets live under the temp dir and must stay short (108-byte path limit).
        tag = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:8]
        return f"/tmp/avsa-ray-{tag}-{node}"

    def _on_head(self, state: StackState, cmd: list[str]) -> list[str]:
        network = state.host_network()
        return network.hosts[0].command(cmd) if network else cmd

    def _worker_hosts(self, state: StackState) -> list[virtual_hosts.VirtualHost]:
        network = state.host_network()
        return network.hosts[1:] if network else []

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        """Write ``text`` to ``path`` readable by this user only (from the first byte on)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        path.chmod(0o600)  # an older file keeps its mode through O_CREAT

    def _ray_auth_env(self, state: StackState) -> dict[str, str]:
        """How Ray processes and clients authenticate: the stack's token file, never ~/.ray/auth_token.

        The mode is always explicit: left unset, Ray turns token auth on by itself whenever some
        other Ray left a token in ~/.ray/auth_token, and our clients would meet 401s. An empty
        RAY_AUTH_TOKEN keeps a token inherited from the caller's shell from winning over the file.
        """
        if not state.ray_token:
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    @staticmethod
    def _mlflow_auth_env(state: StackState) -> dict[str, str]:
        """MLflow's basic-auth app: the admin it creates on first start, and the CSRF key it needs."""
        return {
            "MLFLOW_AUTH_ADMIN_USERNAME": state.mlflow_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": state.mlflow_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        }

    def _ray_env(self, state: StackState) -> dict[str, str]:
        if not state.network:
            # Single-node mode keeps every Ray port on the loopback address.
            return {
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_USAGE_STATS_ENABLED": "0",
                **self._ray_auth_env(state),
            }
        # Cluster mode: training ranks inherit GLOO_SOCKET_IFNAME so gloo uses the host link, not loopback.
        return {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            **self._ray_auth_env(state),
            "GLOO_SOCKET_IFNAME": virtual_hosts.INTERFACE,
            # Declare a silent node dead after ~5 s instead of Ray's ~15-30 s, so that work of a
            # lost host is rescheduled while a test (or a drill with `kill_node`) waits.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "5",
        }

    # ----- health --------------------------------------------------------------------------
    def _healthy(self, name: str, state: StackState) -> bool:
        url = state.endpoints[name]
        try:
            if name == "s3":  # any HTTP answer; unsigned requests are refused with 403
                return requests.get(url, timeout=2).status_code in (200, 403)
            if name == "mlflow":
                return requests.get(f"{url}/health", timeout=2).status_code == 200
            auth = {"Authorization": f"Bearer {state.ray_token}"} if state.ray_token else {}
            if name.startswith("ray@"):  # a worker node: alive in the head's view of the cluster
                summary = f"{state.endpoints['ray']}/nodes?view=summary"
                nodes = requests.get(summary, headers=auth, timeout=5).json()
                return any(
                    n.get("raylet", {}).get("nodeManagerAddress") == url
                    and n["raylet"].get("state") == "ALIVE"
                    for n in nodes["data"]["summary"]
                )
            # `ray job submit` needs the dashboard and the head's job agent, which starts later.
            agent = f"http://{state.host}:{self.cfg.ray_agent_port}/api/healthz"
            return all(
                requests.get(u, headers=auth, timeout=2).status_code == 200
                for u in (f"{url}/api/version", agent)
            )
        except (requests.RequestException, ValueError, KeyError):
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
        fs, bucket = filesystem(f"s3://{state.bucket}", self._storage_of(state))

        def make() -> bool:
            fs.invalidate_cache()
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            return True

        # The S3 gateway answers before the filer behind it accepts writes; retry briefly.
        if not processes.wait_for(make, timeout_s=60):
            raise StackError(f"could not create bucket {state.bucket!r} on {state.endpoints['s3']}")

    def _require_state(self) -> StackState:
        state = self.state()
        if state is None:
            raise StackError(f"no stack is running from {self.state_dir}; start one with `avsa stack up`")
        return state
