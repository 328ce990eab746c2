"""The client's session through the whole system, in four phases, each with its hop counters.

(a) A2S: python-a2s queries pass pop1's XDP program (pass_cache) and bifrost_nf
    answers them, challenge first; the game service sees no client query.
(b) Game traffic: the client's SRCDS `q` is FOU-encapsulated by pop1's XDP,
    fou_map learns client -> pop1, the game service answers `A`, the reply goes
    back to pop1 (fou_map), whose XDP decapsulates and delivers it.
(c) Handshake: a netchannel packet before the handshake is dropped by pop1
    (drop_module: not validated); `k` -> `B` validates the client on pop1, and
    netchannel packets are then echoed through the same path.
(d) The anycast route moves to pop2. pop2's XDP has not seen the handshake, so
    it drops the client's netchannel packets until the client connects again
    through it (as a real client reconnecting does); fou_map moves the client
    to pop2 and every reply comes back through pop2. (Carrying the validation
    over from POP to POP is a separate change.)

Each phase returns what the client got and the counters' deltas per hop, and
says what is wrong with them (problems()): the lab prints them, the kernel
tier asserts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bifrost_testing import topology
from bifrost_testing.refserver import C2S_CONNECT, C2S_GETCHALLENGE, ECHO_PREFIX, S2C_CHALLENGE
from bifrost_testing.system import MAP_NAME, System, delta
from bifrost_testing.topology import GAME_PORT, SERVICE_IP

CONNECTIONLESS = b"\xff\xff\xff\xff"
NETCHANNEL = 3  # netchannel packets per exchange
REPLY_TIMEOUT_S = 3.0
# A packet the program drops has no reply; the sender waits this long for one
# that must not come, after the positive control (a packet that does come back).
QUIET_S = 0.5


@dataclass
class Phase:
    name: str
    client_got: list[str] = field(default_factory=list)
    hops: dict[str, dict[str, int]] = field(default_factory=dict)
    table: dict[str, str] = field(default_factory=dict)  # fou_map afterwards
    problems: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    def count(self, hop: str, counter: str) -> int:
        return self.hops.get(hop, {}).get(counter, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "client_got": self.client_got,
            "hops": self.hops,
            "fou_map_table": self.table,
            "problems": self.problems,
        }


class GameClient:
    """The player: one UDP socket (one source port) for the whole session."""

    def __init__(self, nw: topology.Network) -> None:
        self.sock = nw.client.socket()
        self.sock.bind((topology.client_ip(0), 0))
        self.dst = (SERVICE_IP, GAME_PORT)

    def ask(self, payload: bytes, timeout: float = REPLY_TIMEOUT_S) -> bytes | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(payload, self.dst)
        try:
            return self.sock.recv(2048)
        except TimeoutError:
            return None

    def connect(self) -> tuple[bytes | None, bytes | None]:
        """q -> A(challenge) -> k(challenge) -> B: the SRCDS handshake; (A, B) as received."""
        a = self.ask(CONNECTIONLESS + C2S_GETCHALLENGE + b"getchallenge")
        if a is None or a[:5] != CONNECTIONLESS + S2C_CHALLENGE:
            return a, None
        return a, self.ask(CONNECTIONLESS + C2S_CONNECT + a[5:9])

    def close(self) -> None:
        self.sock.close()


def _measure(system: System, name: str, act: Callable[[Phase], None]) -> Phase:
    phase = Phase(name)
    before = system.snapshot()
    act(phase)
    phase.hops = delta(before, system.snapshot())
    phase.table = system.fou_map_table()
    return phase


def a2s_queries(system: System) -> Phase:
    import a2s as python_a2s

    def act(p: Phase) -> None:
        with system.nw.client.entered():
            info = python_a2s.info((SERVICE_IP, GAME_PORT), timeout=REPLY_TIMEOUT_S)
            players = python_a2s.players((SERVICE_IP, GAME_PORT), timeout=REPLY_TIMEOUT_S)
            rules = python_a2s.rules((SERVICE_IP, GAME_PORT), timeout=REPLY_TIMEOUT_S)
        p.client_got = [
            f"info map={info.map_name}",
            f"{len(players)} players",
            f"{len(rules)} rules",
        ]
        p.expect(info.map_name == MAP_NAME, f"A2S_INFO map {info.map_name!r}, not {MAP_NAME!r}")

    p = _measure(system, "(a) A2S answered by pop1's bifrost_nf", act)
    nf = "pop1.bifrost_nf"
    # python-a2s: each of the three asks for a challenge, then asks again with it.
    p.expect(p.count(nf, "challenges_sent") == 3, "pop1 bifrost_nf sent 3 challenges")
    p.expect(p.count(nf, "answers") == 3, "pop1 bifrost_nf answered 3 queries")
    p.expect(p.count("pop1.xdp", "pass_cache") == 6, "pop1 XDP passed 6 A2S queries up")
    p.expect(p.count("pop1.xdp", "tx_forward") == 0, "pop1 XDP forwarded no A2S query")
    p.expect("pop2.xdp" not in p.hops, "pop2's XDP saw none of it")
    p.expect(p.count("pop2.bifrost_nf", "queries") == 0, "pop2's bifrost_nf saw none of it")
    p.expect(
        system.game()["queries"].get(topology.client_ip(0), 0) == 0,
        "the game service saw no client A2S query",
    )
    return p


def game_via_pop1(system: System, client: GameClient) -> Phase:
    def act(p: Phase) -> None:
        a = client.ask(CONNECTIONLESS + C2S_GETCHALLENGE + b"getchallenge")
        p.client_got = [repr(a[:5]) if a else "no reply"]
        p.expect(a is not None and a[:5] == CONNECTIONLESS + S2C_CHALLENGE, "`A` came back")

    p = _measure(system, "(b) game packet client -> pop1 -> game service -> pop1 -> client", act)
    p.expect(p.count("pop1.xdp", "tx_forward") == 1, "pop1 XDP encapsulated 1 packet")
    p.expect(p.count("fou_map", "learned") == 1, "fou_map learned the client")
    p.expect(p.count("game_service", "client_game_packets") == 1, "the service got it")
    p.expect(p.count("fou_map", "tx_fou") == 1, "fou_map saw the reply leave")
    p.expect(p.count("pop1.xdp", "tx_return") == 1, "pop1 XDP decapsulated 1 reply")
    p.expect(p.table.get(topology.client_ip(0)) == topology.pop_ip(1), "fou_map: client -> pop1")
    return p


def _netchannel(client: GameClient, p: Phase, tag: str) -> int:
    echoed = 0
    for i in range(NETCHANNEL):
        msg = f"{tag} netchannel {i}".encode()
        echoed += client.ask(msg) == ECHO_PREFIX + msg
    p.client_got.append(f"{echoed}/{NETCHANNEL} netchannel echoes")
    return echoed


def _validate_through(system: System, client: GameClient, n: int, name: str) -> Phase:
    """Through POP n: a netchannel packet is dropped (not validated there), the
    handshake gets `A` and `B` back, then every netchannel packet is echoed."""
    pop = f"pop{n}"

    def act(p: Phase) -> None:
        if system.nw.active_pop != n:
            system.nw.use_pop(n)
        early = client.ask(b"netchannel, not validated", timeout=QUIET_S)
        p.client_got = [f"netchannel dropped by {pop}" if early is None else f"reply {early!r}"]
        p.expect(early is None, f"{pop} let an unvalidated netchannel packet through")
        a, b = client.connect()
        p.client_got.append("handshake: A, B" if b else f"handshake: A={a!r} B={b!r}")
        p.expect(b is not None and b[:5] == CONNECTIONLESS + b"B", f"`B` came back via {pop}")
        p.expect(_netchannel(client, p, pop) == NETCHANNEL, "every netchannel packet echoed")

    p = _measure(system, name, act)
    xdp = f"{pop}.xdp"
    p.expect(p.count(xdp, "drop_module") == 1, f"{pop} XDP dropped the unvalidated packet")
    p.expect(p.count(xdp, "tx_forward") == 2 + NETCHANNEL, f"{pop} forwarded q, k, the data")
    p.expect(p.count(xdp, "tx_return") == 2 + NETCHANNEL, f"{pop} returned A, B, the echoes")
    p.expect(p.count("game_service", "client_handshakes") == 1, "the service accepted it")
    p.expect(
        p.count("game_service", "client_game_packets") == 2 + NETCHANNEL,
        "the service got q, k and the netchannel packets, not the dropped one",
    )
    p.expect(p.table.get(topology.client_ip(0)) == topology.pop_ip(n), f"fou_map: client -> {pop}")
    return p


def handshake_via_pop1(system: System, client: GameClient) -> Phase:
    return _validate_through(system, client, 1, "(c) SRCDS handshake validates the client on pop1")


def move_to_pop2(system: System, client: GameClient) -> Phase:
    p = _validate_through(
        system, client, 2, "(d) route moves to pop2; the client reconnects; replies follow"
    )
    p.expect("pop1.xdp" not in p.hops, "nothing went through pop1 any more")
    p.expect(p.count("fou_map", "moved") == 1, "fou_map moved the client to pop2")
    p.expect(
        p.count("fou_map", "tx_rewritten") == 2 + NETCHANNEL, "fou_map sent every reply to pop2"
    )
    return p


def run(system: System) -> list[Phase]:
    """The four phases in order; each one's problems are in its Phase."""
    client = GameClient(system.nw)
    try:
        phases = [a2s_queries(system), game_via_pop1(system, client)]
        phases.append(handshake_via_pop1(system, client))
        phases.append(move_to_pop2(system, client))
    finally:
        client.close()
    return phases


def hop_table(phases: list[Phase]) -> str:
    """Per phase and hop, the counters that moved: what an operator reads."""
    lines = [f"{'phase':<5} {'hop':<18} counters that moved"]
    for ph in phases:
        tag = ph.name.split(" ")[0]
        for hop, counters in ph.hops.items():
            text = ", ".join(f"{k} +{v}" for k, v in sorted(counters.items()))
            lines.append(f"{tag:<5} {hop:<18} {text}")
        lines.append(f"{tag:<5} {'client got':<18} {'; '.join(ph.client_got)}")
        table = ", ".join(f"{c} -> {pop}" for c, pop in sorted(ph.table.items())) or "empty"
        lines.append(f"{tag:<5} {'fou_map table':<18} {table}")
    return "\n".join(lines)
