"""Start, watch and stop service processes by PID (never by name).

A process is identified by (pid, create_time) so a recycled PID is never mistaken for ours.
Services are started in their own session; stopping one stops its whole tree: its
descendants and every process still in its session (daemons that were re-parented).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class ManagedProcess:
    """A process we started; ``create_time`` (s since epoch) guards against PID reuse."""

    name: str
    pid: int
    create_time: float
    log: str

    def handle(self) -> psutil.Process | None:
        """The live process, or None once it has exited (or its PID now belongs to another)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def alive(self) -> bool:
        return self.handle() is not None


def executable(name: str) -> str:
    """Path of a console script from this environment (the venv's bin first, then PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' not found next to {sys.executable} or on PATH; run `make venv`")
    return found


def venv_path() -> str:
    """PATH with this environment's bin dir first, so services (and Ray jobs) run our Python."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def spawn(name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> ManagedProcess:
    """Start ``cmd`` in a new session with stdout/stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PATH": venv_path(), **(env or {})},
            start_new_session=True,  # own session: Ctrl-C in the CLI does not kill services
        )
    return ManagedProcess(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log))


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """``root``, its descendants, and every other process in its session (re-parented daemons)."""
    members = {root.pid: root}
    with contextlib.suppress(psutil.Error):
        for child in root.children(recursive=True):
            members[child.pid] = child
    try:
        sid = os.getsid(root.pid)
    except ProcessLookupError:
        sid = None
    if sid == root.pid:  # only when root leads its own session, else we would catch our own shell
        for proc in psutil.process_iter():
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if proc.pid not in members and os.getsid(proc.pid) == sid:
                    members[proc.pid] = proc
    return list(members.values())


GRACE_S = 10.0  # how long a stopped service may take to exit before it is killed


def stop(managed: Sequence[ManagedProcess], grace_s: Mapping[str, float] | None = None) -> None:
    """SIGTERM the roots of ``managed`` together and let each take its own children down (a TERM to
    every member at once kept ``ray start --block``'s alive for the whole grace); SIGKILL what is left
    of a tree after its grace (``grace_s`` by service name, else ``GRACE_S``), counted from the TERM."""
    graces = grace_s or {}
    trees = {m.name: process_tree(root) for m in managed if (root := m.handle()) is not None}
    for tree in trees.values():
        with contextlib.suppress(psutil.Error):
            tree[0].send_signal(signal.SIGTERM)
    sent = time.monotonic()
    for name, tree in sorted(trees.items(), key=lambda item: graces.get(item[0], GRACE_S)):
        left_s = sent + graces.get(name, GRACE_S) - time.monotonic()
        _, alive = psutil.wait_procs(tree, timeout=max(0.0, left_s))
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def leftovers(managed: ManagedProcess) -> list[psutil.Process]:
    """What is left of ``managed`` once its root process is gone: the other processes of the session it
    led (a server's workers outlive a SIGKILL of their parent and keep its ports). A session id is not
    reused while a process is in it, so these are ours."""
    if managed.alive():
        return []
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getsid(proc.pid) == managed.pid:
                found.append(proc)
    return found


def terminate(tree: Sequence[psutil.Process], grace_s: float = GRACE_S) -> None:
    """SIGTERM every process of ``tree``, then SIGKILL what is left after ``grace_s``."""
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_holder(port: int) -> str:
    """A human description of the process listening on ``port`` (best effort)."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({proc.name()})"
    return "another process"


def free_port(host: str = "127.0.0.1", avoid: Callable[[int], bool] = lambda _: False) -> int:
    """An unused TCP port on ``host`` for which ``avoid(port)`` is False."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if not avoid(port):
            return port
    raise RuntimeError("could not find a free port")


def set_local_rank_env(rank: int, world_size: int, port: int) -> None:
    """Set this process's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (127.0.0.1) and
    ``MASTER_PORT`` (``port``): rank ``rank`` of ``world_size`` ranks that all run on this machine, as
    torch.distributed's ``env://`` rendezvous (and DeepSpeed, torchrun) read them."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    """Poll ``check`` until it returns True or ``timeout_s`` passes; exceptions count as False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return True
        time.sleep(interval_s)
    return False


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
