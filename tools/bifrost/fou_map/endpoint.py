"""Game-server FOU endpoint: the kernel's fou port and an ipip tunnel, up without races.

The tunnel is NBMA (``remote any``): it accepts FOU from every POP, and sends
towards the route's gateway (the default POP) unless fou_map rewrites the
outer destination to the POP the client came in by. ``up`` returns only when
the device is up, its addresses are installed (not tentative) and a socket can
bind them, so a game server started right after it never races the setup.

Room for fou_map's auth token (AUTH.md: 8 bytes after the inner packet): the
tunnel's MTU is made 8 bytes smaller than the kernel's default when the device
is created, and its gso_max_segs is 1, so the stack segments GSO packets
before they are encapsulated and every FOU packet fou_map sees can carry its
own token (fou_map refuses a GSO FOU packet when keys are set: ``tx_gso``).
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute

from bifrost import netns

log = logging.getLogger(__name__)

IFA_F_TENTATIVE = 0x40
IFF_UP = 0x1
TOKEN_ROOM = 8  # bytes of fou_map's auth trailer


class EndpointError(RuntimeError):
    """The endpoint could not be set up; the message says which step."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how: netns (None = current), tunnel source, default POP, addresses."""

    local: str  # outer source address of replies (the game server's underlay address)
    gateway: str  # default POP: where unmapped replies go
    netns: str | None = None
    port: int = 5555  # FOU port, the same on the POPs
    ifname: str = "fm0"
    addresses: tuple[str, ...] = ()  # service addresses the game server binds, CIDR
    routes: tuple[str, ...] = ("0.0.0.0/0",)  # client prefixes routed back via the tunnel
    encap_csum: bool = False


def _ip(ep: Endpoint, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ep.netns] if ep.netns else []), *args]
    log.info("$ %s", shlex.join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise EndpointError(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
    return done


@contextmanager
def _ipr(ep: Endpoint) -> Iterator[IPRoute]:
    ipr = netns.rtnl(ep.netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _fou_ports(ep: Endpoint) -> set[int]:
    out = _ip(ep, ["fou", "show"], check=False).stdout
    ports = set()
    for line in out.splitlines():
        parts = line.split()
        if "port" in parts:
            ports.add(int(parts[parts.index("port") + 1]))
    return ports


def _link_args(ep: Endpoint) -> list[str]:
    return [
        "type",
        "ipip",
        "remote",
        "any",
        "local",
        ep.local,
        "ttl",
        "64",
        "encap",
        "fou",
        "encap-sport",
        "auto",
        "encap-dport",
        str(ep.port),
        "encap-csum" if ep.encap_csum else "noencap-csum",
    ]


def _link_matches(ep: Endpoint) -> bool:
    """The device exists with our local address and FOU encapsulation."""
    done = _ip(ep, ["-d", "link", "show", "dev", ep.ifname], check=False)
    if done.returncode != 0:
        return False
    text = done.stdout
    return (
        "ipip" in text
        and f"local {ep.local}" in text
        and "remote any" in text
        and f"encap fou encap-sport auto encap-dport {ep.port}" in text
    )


def _addresses_ready(ep: Endpoint) -> bool:
    with _ipr(ep) as ipr:
        idx = ipr.link_lookup(ifname=ep.ifname)
        if not idx:
            return False
        link = ipr.get_links(idx[0])[0]
        if not link["flags"] & IFF_UP or link.get_attr("IFLA_OPERSTATE") not in ("UP", "UNKNOWN"):
            return False
        have = {}
        for a in ipr.get_addr(index=idx[0], family=socket.AF_INET):
            flags = a.get_attr("IFA_FLAGS") or a["flags"]
            have[a.get_attr("IFA_ADDRESS")] = flags
    for cidr in ep.addresses:
        ip = str(ipaddress.IPv4Interface(cidr).ip)
        if ip not in have or have[ip] & IFA_F_TENTATIVE:
            return False
    return True


def _can_bind(ep: Endpoint) -> bool:
    """The final word: a game server's bind() to each address must succeed now."""
    for cidr in ep.addresses:
        ip = str(ipaddress.IPv4Interface(cidr).ip)
        with netns.entered(ep.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((ip, 0))
        except OSError:
            return False
        finally:
            s.close()
    return True


def up(ep: Endpoint, timeout: float = 10.0) -> None:
    """Create (or keep) the fou port, the tunnel, addresses and routes; wait until usable."""
    if ep.netns:
        netns.require(ep.netns)  # the game server's namespace is made by its container
    if ep.port not in _fou_ports(ep):
        _ip(ep, ["fou", "add", "port", str(ep.port), "ipproto", "4"])
    if not _link_matches(ep):
        _ip(ep, ["link", "del", "dev", ep.ifname], check=False)
        _ip(ep, ["link", "add", "name", ep.ifname, *_link_args(ep)])
        with _ipr(ep) as ipr:
            mtu = int(ipr.get_links(ipr.link_lookup(ifname=ep.ifname)[0])[0].get_attr("IFLA_MTU"))
        _ip(ep, ["link", "set", "dev", ep.ifname, "mtu", str(mtu - TOKEN_ROOM)])
    _ip(ep, ["link", "set", "dev", ep.ifname, "gso_max_segs", "1"])
    for cidr in ep.addresses:
        # replace: idempotent, and a changed prefix length is corrected.
        _ip(ep, ["addr", "replace", cidr, "dev", ep.ifname])
    _ip(ep, ["link", "set", "dev", ep.ifname, "up"])
    for prefix in ep.routes:
        _ip(ep, ["route", "replace", prefix, "via", ep.gateway, "dev", ep.ifname, "onlink"])
    deadline = time.monotonic() + timeout
    while not (_addresses_ready(ep) and _can_bind(ep)):
        if time.monotonic() > deadline:
            raise EndpointError(f"{ep.ifname}: not up with {list(ep.addresses)} after {timeout}s")
        time.sleep(0.02)


def down(ep: Endpoint) -> None:
    """Remove the tunnel (its routes and addresses go with it) and the fou port."""
    if ep.netns:
        netns.require(ep.netns)
    _ip(ep, ["link", "del", "dev", ep.ifname], check=False)
    if ep.port in _fou_ports(ep):
        _ip(ep, ["fou", "del", "port", str(ep.port)])


def is_up(ep: Endpoint) -> bool:
    return ep.port in _fou_ports(ep) and _link_matches(ep) and _addresses_ready(ep)
