"""A next hop the FIB refuses is counted under the reason the FIB gives, not as no route.

What the program can observe of a failed transmit is what bpf_fib_lookup
answers before it: a blackhole/unreachable/prohibit route (BLACKHOLE,
UNREACHABLE, PROHIBIT: drop_unreachable), no route or forwarding off on the
ingress device (NOT_FWDED, FWD_DISABLED: drop_no_route, as before). Each
path (forward to a game server, return to a client) is driven through
BPF_PROG_TEST_RUN inside a netns whose FIB says so.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from xdp_harness import (
    CLIENT,
    GS,
    KEY,
    VIP,
    Xdp,
    auth_config,
    client_frame,
    fou_frame,
    make_config,
)

from bifrost.netns import Namespace
from bifrost.xdp import maps_def

pytestmark = pytest.mark.bpf


@pytest.fixture
def gs_known(fib_ns: tuple[Namespace, int, str]) -> tuple[Namespace, int]:
    """conftest's fib_ns (f0 10.0.0.1/24, forwarding on) with GS's neighbour known."""
    ns, f0, _ = fib_ns
    ns.run(["ip", "neigh", "replace", GS, "lladdr", "02:00:00:00:00:42", "dev", "f0"])
    return ns, f0


def _forget_nexthops(xdp: Xdp) -> None:
    """Expire the fixture's next hops so the program asks the FIB."""
    st = maps_def.BY_NAME["nexthop"]
    xdp.ms["gs_nexthops"].update(bytes(4), st.pack(dst=GS, expires_ns=0))
    xdp.ms["nexthops"].delete(bytes(map(int, CLIENT.split("."))))


def _run(xdp: Xdp, ns: Namespace, f0: int, frame: bytes, rule: int, reason: str) -> None:
    """Run frame with the next hops forgotten: the FIB decides, and one counter moves."""
    _forget_nexthops(xdp)
    before = xdp.counts()
    with ns.entered():
        res = xdp.run(frame, ingress_ifindex=f0)
    after = xdp.counts()
    assert res.verdict == "DROP" if reason != "tx_forward" else res.verdict == "TX"
    diff = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert diff == {(rule, reason): 1}


def _refused(
    xdp: Xdp, ns: Namespace, f0: int, frame: bytes, dst: str, kinds: tuple[str, ...]
) -> None:
    """Each kind of route to dst that refuses is drop_unreachable; with the route gone
    and forwarding off on f0, drop_no_route. Leaves forwarding on again, no route to dst."""
    for kind in kinds:
        ns.run(["ip", "route", "replace", kind, f"{dst}/32"])
        _run(xdp, ns, f0, frame, 1, "drop_unreachable")
    ns.run(["ip", "route", "del", f"{dst}/32"])
    ns.sysctl("net.ipv4.conf.f0.forwarding", "0")
    _run(xdp, ns, f0, frame, 1, "drop_no_route")
    ns.sysctl("net.ipv4.conf.f0.forwarding", "1")


FORWARD = client_frame(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / b"hi")


def test_forward_path_fib_reasons(xdp: Xdp, gs_known: tuple[Namespace, int]) -> None:
    ns, f0 = gs_known
    _run(xdp, ns, f0, FORWARD, 1, "tx_forward")  # positive control: the FIB resolves GS
    _refused(xdp, ns, f0, FORWARD, GS, ("blackhole", "unreachable", "prohibit"))
    _run(xdp, ns, f0, FORWARD, 1, "tx_forward")


def test_return_path_fib_reasons(xdp: Xdp, gs_known: tuple[Namespace, int]) -> None:
    ns, f0 = gs_known
    xdp.apply(auth_config())
    reply = IP(src=VIP, dst=CLIENT) / UDP(sport=27015, dport=40000) / b"re"
    frame = fou_frame(GS, reply, token=KEY)
    _refused(xdp, ns, f0, frame, CLIENT, ("blackhole",))
    # Control: no route at all stays drop_no_route.
    _run(xdp, ns, f0, frame, 1, "drop_no_route")
    xdp.apply(make_config())
