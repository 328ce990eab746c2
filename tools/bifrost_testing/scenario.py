"""The client's session through the whole system, in phases, each with its hop counters.

(a) A2S: python-a2s queries pass pop1's XDP program (pass_cache) and bifrost_nf
    answers them, challenge first; the game service sees no client query.
(b) Game traffic: the client's SRCDS `q` is FOU-encapsulated by pop1's XDP,
    fou_map learns client -> pop1, the game service answers `A`, the reply goes
    back to pop1 (fou_map), whose XDP decapsulates and delivers it.
(c) Handshake: a netchannel packet before the handshake passes pop1 on the
    rule's budget of unvalidated packets and the game service ignores it (no
    connection); `k` -> `B` validates the client on pop1, and netchannel
    packets are then echoed through the same path.
(d), (e) The same client's Steam-networking and RakNet games (other ports,
    other rules: steam, rust): ConnectOK and open connection reply 2 through
    pop1 validate it there, and its data is echoed.
(f) The anycast route moves to pop2, which has never seen a handshake. The
    client does not reconnect: pop2 forwards its game packets on the rules'
    budget, fou_map moves the client to pop2, and the server's replies through
    pop2 validate it there; every reply comes back through pop2.

Each phase returns what the client got and the counters' deltas per hop, and
says what is wrong with them (problems()): the lab prints them, the kernel
tier asserts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bifrost_testing import game_peers, topology
from bifrost_testing.refserver import C2S_CONNECT, C2S_GETCHALLENGE, ECHO_PREFIX, S2C_CHALLENGE
from bifrost_testing.system import GAME_RULES, MAP_NAME, System, delta
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
    facts: list[str] = field(default_factory=list)  # what was measured, for the "ok" lines

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
            "facts": self.facts,
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


def handshake_via_pop1(system: System, client: GameClient) -> Phase:
    """Through pop1: a netchannel packet before the handshake passes on the rule's
    budget and is ignored by the service (no connection), the handshake gets `A` and
    `B` back, then every netchannel packet is echoed."""

    def act(p: Phase) -> None:
        early = client.ask(b"netchannel, not validated", timeout=QUIET_S)
        p.client_got = ["no reply before the handshake" if early is None else f"reply {early!r}"]
        p.expect(early is None, "the service answered a client it has not accepted")
        a, b = client.connect()
        p.client_got.append("handshake: A, B" if b else f"handshake: A={a!r} B={b!r}")
        p.expect(b is not None and b[:5] == CONNECTIONLESS + b"B", "`B` came back via pop1")
        p.expect(_netchannel(client, p, "pop1") == NETCHANNEL, "every netchannel packet echoed")

    p = _measure(system, "(c) SRCDS handshake validates the client on pop1", act)
    forwarded, returned = p.count("pop1.xdp", "tx_forward"), p.count("pop1.xdp", "tx_return")
    p.expect("drop_module" not in p.hops.get("pop1.xdp", {}), "pop1 XDP dropped nothing")
    p.expect(forwarded == 3 + NETCHANNEL, "pop1 forwarded the early packet, q, k, the data")
    p.expect(returned == 2 + NETCHANNEL, "pop1 returned A, B, the echoes")
    p.expect(p.count("game_service", "client_handshakes") == 1, "the service accepted it")
    p.expect(
        p.count("game_service", "client_game_packets") == 3 + NETCHANNEL,
        "the service got the early packet, q, k and the netchannel packets",
    )
    p.expect(p.table.get(topology.client_ip(0)) == topology.pop_ip(1), "fou_map: client -> pop1")
    p.facts.append(
        f"srcds: `B` via pop1, {_echoes(p)}/{NETCHANNEL} netchannel echoes; pop1 game rule "
        f"tx_forward +{forwarded} tx_return +{returned}"
    )
    return p


def _echoes(p: Phase, tag: str = "netchannel") -> int:
    """n of the client_got line "n/N <tag> echoes"."""
    line = next((g for g in p.client_got if g.endswith(f" {tag} echoes")), "0/")
    return int(line.split("/")[0])


def peer_handshake_via_pop1(system: System, peer: game_peers.GameClient, rule: str) -> Phase:
    """A RakNet or Steam-networking game of the same client (rule: its POP rule)."""
    title = {"steam": "Steam networking", "raknet": "RakNet"}[peer.proto]

    def act(p: Phase) -> None:
        got = peer.connect(REPLY_TIMEOUT_S)
        p.client_got = [f"handshake: {', '.join(got) or 'no reply'}"]
        p.expect(len(got) == 2, f"the {title} handshake's answers came back via pop1")
        _peer_data(peer, p)

    p = _measure(system, f"({'d' if peer.proto == 'steam' else 'e'}) {title} via pop1", act)
    hop = f"pop1.xdp.{rule}"
    forwarded, returned = p.count(hop, "tx_forward"), p.count(hop, "tx_return")
    p.expect(forwarded == 2 + NETCHANNEL, f"pop1 forwarded the handshake and data ({rule} rule)")
    p.expect(returned == 2 + NETCHANNEL, f"pop1 returned the answers and echoes ({rule} rule)")
    p.expect("drop_module" not in p.hops.get(hop, {}), "pop1 XDP dropped nothing")
    p.expect(p.count(f"{peer.proto}_service", "handshakes") == 1, "the service accepted it")
    p.facts.append(
        f"{peer.proto}: {', '.join(p.client_got[0].split(': ')[1:])} via pop1, "
        f"{_echoes(p, 'data')}/{NETCHANNEL} data echoes; pop1 {rule} rule "
        f"tx_forward +{forwarded} tx_return +{returned}"
    )
    return p


def _peer_data(peer: game_peers.GameClient, p: Phase) -> int:
    echoed = 0
    for i in range(NETCHANNEL):
        sent = peer.data(f"{peer.proto} data {i}".encode())
        echoed += peer.echoed(sent, peer.ask(sent, REPLY_TIMEOUT_S))
    p.client_got.append(f"{echoed}/{NETCHANNEL} data echoes")
    return echoed


def move_to_pop2(
    system: System, client: GameClient, peers: tuple[tuple[game_peers.GameClient, str], ...] = ()
) -> Phase:
    """The route moves to pop2; the client (and its other games: peers, with their
    rules) keeps playing without a new handshake."""

    def act(p: Phase) -> None:
        system.nw.use_pop(2)
        p.expect(_netchannel(client, p, "pop2") == NETCHANNEL, "every netchannel packet echoed")
        for peer, _ in peers:
            p.expect(_peer_data(peer, p) == NETCHANNEL, f"every {peer.proto} packet echoed")

    p = _measure(system, "(f) route moves to pop2; the client keeps playing; replies follow", act)
    p.expect(not any(h.startswith("pop1.xdp") for h in p.hops), "nothing went through pop1")
    p.expect(p.count("fou_map", "moved") == 1, "fou_map moved the client to pop2")
    replies = NETCHANNEL * (1 + len(peers))
    p.expect(p.count("fou_map", "tx_rewritten") == replies, "fou_map sent every reply to pop2")
    p.expect(p.count("game_service", "client_handshakes") == 0, "no new SRCDS handshake")
    p.expect(p.table.get(topology.client_ip(0)) == topology.pop_ip(2), "fou_map: client -> pop2")
    hops = ["pop2.xdp", *(f"pop2.xdp.{rule}" for _, rule in peers)]
    for hop in hops:
        p.expect("drop_module" not in p.hops.get(hop, {}), f"{hop} dropped nothing")
        p.expect(p.count(hop, "tx_forward") == NETCHANNEL, f"{hop} forwarded every packet")
        p.expect(p.count(hop, "tx_return") == NETCHANNEL, f"{hop} returned every echo")
    for peer, _ in peers:
        p.expect(p.count(f"{peer.proto}_service", "handshakes") == 0, f"no new {peer.proto} one")
    echoes = [f"{_echoes(p)}/{NETCHANNEL} srcds"] + [
        f"{_echoes_nth(p, i)}/{NETCHANNEL} {peer.proto}" for i, (peer, _) in enumerate(peers)
    ]
    p.facts.append(
        f"pop move: {', '.join(echoes)} echoes via pop2 with no new handshake; fou_map moved "
        f"{topology.client_ip(0)} to {p.table.get(topology.client_ip(0))}; pop1 carried "
        f"{sum(sum(c.values()) for h, c in p.hops.items() if h.startswith('pop1.xdp'))} packets"
    )
    return p


def _echoes_nth(p: Phase, i: int) -> int:
    """n of the i-th "n/N data echoes" line."""
    lines = [g for g in p.client_got if g.endswith(" data echoes")]
    return int(lines[i].split("/")[0]) if i < len(lines) else 0


def run(system: System) -> list[Phase]:
    """The phases in order; each one's problems are in its Phase."""
    client = GameClient(system.nw)
    peers = tuple(
        (
            game_peers.GameClient(
                system.nw.client, topology.client_ip(0), (SERVICE_IP, GAME_RULES[rule][1]), proto
            ),
            rule,
        )
        for proto, rule in (("steam", "steam"), ("raknet", "rust"))
    )
    try:
        phases = [a2s_queries(system), game_via_pop1(system, client)]
        phases.append(handshake_via_pop1(system, client))
        phases += [peer_handshake_via_pop1(system, peer, rule) for peer, rule in peers]
        phases.append(move_to_pop2(system, client, peers))
    finally:
        client.close()
        for peer, _ in peers:
            peer.close()
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
