"""Separate "hosts" on one machine: Linux network namespaces joined by veth pairs to a bridge.

Each host gets its own network stack and address (``10.X.Y.1``, ``.2``, …); the bridge in the
root namespace has ``.254``, so tests and CLIs on the machine reach every host by address,
exactly as they would reach the nodes of a real cluster. Inside every host the interface is
called ``eth0``, so ``GLOO_SOCKET_IFNAME=eth0`` works on all of them. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

INTERFACE = "eth0"  # the interface name inside every host


class HostNetworkError(RuntimeError):
    """The namespaces could not be created; the message names the failing command."""


@dataclass
class VirtualHost:
    """One host: a network namespace with one address on the shared bridge."""

    name: str  # "a", "b", …
    netns: str
    address: str

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside this host (``ip netns exec`` execs it, so the PID is the command's)."""
        return ["ip", "netns", "exec", self.netns, *cmd]


@dataclass
class HostNetwork:
    """The namespaces, their veth links and the bridge; :meth:`destroy` removes all of them."""

    bridge: str
    gateway: str
    hosts: list[VirtualHost] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # root-side veth ends

    @classmethod
    def from_dict(cls, data: dict) -> HostNetwork:
        return cls(data["bridge"], data["gateway"], [VirtualHost(**h) for h in data["hosts"]], data["links"])

    def to_dict(self) -> dict:
        return asdict(self)

    def destroy(self) -> None:
        """Delete every namespace, veth pair and the bridge; idempotent."""
        for host in self.hosts:
            with contextlib.suppress(HostNetworkError):
                _ip("netns", "del", host.netns)  # also deletes the veth pair of a moved link
        for link in self.links:
            with contextlib.suppress(HostNetworkError):
                _ip("link", "del", link)
        with contextlib.suppress(HostNetworkError):
            _ip("link", "del", self.bridge)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostNetworkError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def names_for(tag: str) -> tuple[str, str]:
    """(name prefix, /24 subnet prefix) derived from ``tag``, so two stacks never share names or addresses."""
    digest = hashlib.sha1(tag.encode()).digest()
    prefix = f"av{digest.hex()[:6]}"  # Linux interface names are at most 15 bytes
    subnet = f"10.{200 + digest[3] % 50}.{digest[4]}"
    return prefix, subnet


def create(tag: str, count: int) -> HostNetwork:
    """Create ``count`` hosts named a, b, … on a fresh bridge; rolls back on any failure."""
    if shutil.which("ip") is None:
        raise HostNetworkError("`ip` (iproute2) is not installed; `apt-get install iproute2`")
    prefix, subnet = names_for(tag)
    net = HostNetwork(bridge=f"{prefix}br", gateway=f"{subnet}.254")
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        for index in range(count):
            host = VirtualHost(
                chr(ord("a") + index), f"{prefix}-{chr(ord('a') + index)}", f"{subnet}.{index + 1}"
            )
            outer, inner = f"{prefix}{index}h", f"{prefix}{index}n"
            _ip("netns", "add", host.netns)
            net.hosts.append(host)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            net.links.append(outer)
            _ip("link", "set", inner, "netns", host.netns)
            _ip("-n", host.netns, "link", "set", inner, "name", INTERFACE)
            _ip("link", "set", outer, "master", net.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", INTERFACE)
            _ip("-n", host.netns, "link", "set", INTERFACE, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "route", "add", "default", "via", net.gateway)
    except HostNetworkError as exc:
        net.destroy()
        raise HostNetworkError(f"{exc} (creating hosts needs root and iproute2)") from exc
    return net
