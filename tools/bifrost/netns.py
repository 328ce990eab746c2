"""Network namespaces: enter an existing one by name; create and wire ones for tests and the lab.

Built on pyroute2 (netlink). pyroute2 creates a namespace it is asked to enter
when it does not exist (O_CREAT by default); an operator's `--netns typo` must
be an error instead, so the commands use ``require``, ``entered`` and ``rtnl``
here, which never create. ``Namespace`` creates: names are unique per process
so concurrent tests never collide, and close() removes the namespace with
everything in it.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import shlex
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import pyroute2.config
from pyroute2 import IPRoute, NetNS, netns

log = logging.getLogger(__name__)

# pyroute2 creates and enters namespaces through a forked helper and gives it
# 2 s to answer. Creating a namespace waits for the kernel's pending namespace
# cleanups (pernet_ops_rwsem), which after a burst of teardowns on a loaded
# machine, or in a TCG guest, takes longer: CI's 6.12 guest timed out there.
CHILD_TIMEOUT_S = 60
pyroute2.config.default_communicate_timeout = max(
    pyroute2.config.default_communicate_timeout, CHILD_TIMEOUT_S
)
pyroute2.config.default_create_socket_timeout = max(
    pyroute2.config.default_create_socket_timeout, CHILD_TIMEOUT_S
)
_counter = itertools.count()
NETNS_DIR = Path("/run/netns")


class NoSuchNetns(OSError):
    """A network namespace named on the command line or in the config does not exist."""


def require(name: str) -> None:
    """Raise NoSuchNetns unless `ip netns` knows the namespace."""
    if "/" in name or name in ("", ".", "..") or not (NETNS_DIR / name).exists():
        raise NoSuchNetns(f"network namespace {name!r} does not exist (see `ip netns list`)")


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Switch this thread into an existing namespace (None: stay); never creates one."""
    if name is None:
        yield
        return
    require(name)
    saved = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.setns(name, flags=0)
        try:
            yield
        finally:
            netns.setns(saved, flags=0)
    finally:
        os.close(saved)


def rtnl(name: str | None) -> IPRoute:
    """A netlink socket in an existing namespace (None: ours); never creates one."""
    if name is None:
        return IPRoute()
    require(name)
    return NetNS(name, flags=0)


class Namespace:
    """One network namespace; use as a context manager or call close()."""

    def __init__(self, prefix: str, name: str | None = None) -> None:
        self.name = name or f"{prefix}-{os.getpid()}-{next(_counter)}"
        netns.create(self.name)
        with self.ipr() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def ipr(self) -> NetNS:
        return NetNS(self.name)

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and capture its output."""
        full = ["ip", "netns", "exec", self.name, *argv]
        log.debug("$ %s", shlex.join(full))
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(full)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)  # type: ignore[call-overload]

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Switch this thread into the namespace (sockets made inside stay there)."""
        netns.pushns(self.name)
        try:
            yield
        finally:
            netns.popns()

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        with self.entered():
            return socket.socket(family, kind)

    def address(self, ifname: str, cidr: str) -> None:
        iface = ipaddress.IPv4Interface(cidr)
        with self.ipr() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")

    def route(self, dst: str, gateway: str | None = None, dev: str | None = None) -> None:
        args: dict[str, object] = {"dst": dst}
        with self.ipr() as ipr:
            if gateway:
                args["gateway"] = gateway
            if dev:
                args["oif"] = ipr.link_lookup(ifname=dev)[0]
            ipr.route("replace", **args)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def close(self) -> None:
        try:
            netns.remove(self.name)
        except OSError as e:
            log.warning("netns %s: remove failed: %s", self.name, e)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def veth(a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
    """A veth pair with one end in each namespace (both down, no address)."""
    with IPRoute() as ipr:
        tmp = f"bv{os.getpid() % 100000}{next(_counter)}"
        ipr.link("add", ifname=tmp, kind="veth", peer={"ifname": b_if, "net_ns_fd": b.name})
        ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=a.name)
    with a.ipr() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], ifname=a_if)


def link(a: Namespace, a_if: str, a_cidr: str, b: Namespace, b_if: str, b_cidr: str) -> None:
    """veth between a and b with addresses, both ends up."""
    veth(a, a_if, b, b_if)
    a.address(a_if, a_cidr)
    b.address(b_if, b_cidr)
