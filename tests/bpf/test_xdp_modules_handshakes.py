"""Game modules rust, steam and ue3 through BPF_PROG_TEST_RUN: a fixture table per game.

Before validation a client gets only well-formed handshake packets through; each
malformed variant is dropped and counted under the rule's drop_module. Only the game
server's reply that proves the address (RakNet reply 2, Steam ConnectOK, Unreal's
challenge ack), relayed by the return path, validates the client: for that service
and client port only; one from elsewhere or for another rule validates nothing.
"""

from __future__ import annotations

import game_fixtures as gf
import pytest
from xdp_harness import CLIENT, GS, KEY_OLD, VIP, VIP2, Xdp
from xdp_modules_harness import (
    CLIENT_PORT,
    GAMES,
    GS_OTHER,
    OTHER_PORT,
    RULE_OTHER,
    Game,
    from_service,
    game_clients,
    rule_id,
    send_forward,
    send_return,
    set_expiry,
    validated,
)

pytestmark = pytest.mark.bpf
XDP_GAMES = True  # conftest's xdp: xdp_modules_harness.games_loaded()


@pytest.fixture(params=sorted(GAMES))
def game(request: pytest.FixtureRequest) -> Game:
    return GAMES[request.param]


def test_handshakes_forwarded_before_validation(xdp: Xdp, game: Game) -> None:
    for name, payload in game.handshakes.items():
        verdict, moved = send_forward(xdp, game, payload)
        assert (verdict, moved) == ("TX", {(rule_id(xdp, game.rule), "tx_forward"): 1}), name
    assert game_clients(xdp) == {}, "no handshake validates"


def test_malformed_dropped_and_counted(xdp: Xdp, game: Game) -> None:
    for name, payload in game.malformed.items():
        verdict, moved = send_forward(xdp, game, payload)
        assert (verdict, moved) == ("DROP", {(rule_id(xdp, game.rule), "drop_module"): 1}), name
    # Positive control: the same client's well-formed handshake still passes.
    first = next(iter(game.handshakes.values()))
    assert send_forward(xdp, game, first)[0] == "TX"


def test_validated_by_the_servers_proof_only(xdp: Xdp, game: Game) -> None:
    assert not validated(xdp, game), "game data before validation: the budget only"
    # Server replies that are not the proof are relayed and validate nothing.
    for name, payload in game.not_proof.items():
        verdict, moved = send_return(xdp, GS, from_service(payload, game.port))
        assert (verdict, moved) == ("TX", {(rule_id(xdp, game.rule), "tx_return"): 1}), name
        assert not validated(xdp, game), f"validated by {name}"
    verdict, _ = send_return(xdp, GS, from_service(game.proof(CLIENT, CLIENT_PORT), game.port))
    assert verdict == "TX"
    assert validated(xdp, game)
    assert send_forward(xdp, game, game.data) == (
        "TX",
        {(rule_id(xdp, game.rule), "tx_forward"): 1},
    )
    # That client port only: another port of the same address is another connection.
    assert not validated(xdp, game, sport=CLIENT_PORT + 1)
    # Expiry (xdp.srcds_ttl_s applies to every module): aged out, unvalidated again.
    assert set(game_clients(xdp)) == {(CLIENT, CLIENT_PORT, VIP, game.port)}
    set_expiry(xdp, game_clients(xdp)[(CLIENT, CLIENT_PORT, VIP, game.port)], 1)
    assert not validated(xdp, game)


def test_session_reply_validates_a_client_that_moved_here(xdp: Xdp, game: Game) -> None:
    """Issue 13 deliver 2 at one POP: a client validated elsewhere sends game data here;
    it goes through on the budget (so fou_map learns the move), and the game server's
    authenticated session reply through this POP validates it here."""
    assert send_forward(xdp, game, game.data)[0] == "TX", "within the budget"
    assert game_clients(xdp) == {}
    verdict, _ = send_return(xdp, GS, from_service(game.session, game.port))
    assert verdict == "TX"
    assert validated(xdp, game)
    # Replies to a validated client leave its entry alone (a lockless check).
    before = game_clients(xdp)
    assert send_return(xdp, GS, from_service(game.session, game.port))[0] == "TX"
    assert game_clients(xdp) == before


def test_spoofed_validation_attempts_validate_nothing(xdp: Xdp, game: Game) -> None:
    proof = game.proof(CLIENT, CLIENT_PORT)
    attempts = {
        # Outer source not a game server: dropped before any module sees it.
        "from a non-game-server": ("192.0.2.77", from_service(proof, game.port), "drop_unknown_gs"),
        # Another rule's game server claiming this service: the relay check drops it.
        "from another rule's server": (GS_OTHER, from_service(proof, game.port), "drop_relay"),
        # The pop's own address as the outer source.
        "from the POP itself": ("198.51.100.1", from_service(proof, game.port), "drop_unknown_gs"),
        # The right server's address, but not authenticated: no token, a wrong one.
        "without the token": (GS, from_service(proof, game.port), "drop_auth", b""),
        "with a wrong token": (GS, from_service(proof, game.port), "drop_auth", bytes(8)),
        "session data without the token": (
            GS,
            from_service(game.session, game.port),
            "drop_auth",
            b"",
        ),
    }
    for name, (outer, inner, reason, *token) in attempts.items():
        verdict, moved = send_return(xdp, outer, inner, *token)
        assert (verdict, moved) == ("DROP", {(0, reason): 1}), name
        assert game_clients(xdp) == {}, f"validated {name}"
    # The other rule's own server validating the client for ITS service (VIP2, rust):
    # relayed, and it validates nothing for this rule.
    other = from_service(proof, OTHER_PORT, vip=VIP2)
    verdict, moved = send_return(xdp, GS_OTHER, other)
    assert (verdict, moved) == ("TX", {(rule_id(xdp, RULE_OTHER), "tx_return"): 1})
    assert not validated(xdp, game)
    # The proof for another client validates that client, not this one.
    elsewhere = from_service(game.proof("192.0.2.99", CLIENT_PORT), game.port, dst="192.0.2.99")
    send_return(xdp, GS, elsewhere)  # relayed or not (no next hop for it): no matter
    assert not validated(xdp, game)
    # Positive control: the real proof from the real server does validate, with the
    # key being rolled in (accepted, not yet sent) too.
    assert send_return(xdp, GS, from_service(proof, game.port), token=KEY_OLD)[0] == "TX"
    assert validated(xdp, game)


def test_captured_raknet_connection(xdp: Xdp) -> None:
    """A real RakNet connection (game_fixtures.RAKNET_CAPTURE), replayed through the POP
    in order: every client packet passes the rust module, reply 2 validates the client,
    nothing before it does. The 1492-byte MTU probe passes the module and is dropped as
    too big for the 1500-byte link (drop_too_big: RakNet then probes 1200)."""
    game = GAMES["rust-raknet"]
    rid = rule_id(xdp, game.rule)
    for i, (direction, payload) in enumerate(gf.raknet_capture_readdressed(CLIENT, CLIENT_PORT)):
        if direction == "c2s":
            verdict, moved = send_forward(xdp, game, payload)
            if len(payload) == 1492 - 28:
                assert (verdict, moved) == ("DROP", {(rid, "drop_too_big"): 1}), i
            else:
                assert (verdict, moved) == ("TX", {(rid, "tx_forward"): 1}), i
        else:
            assert send_return(xdp, GS, from_service(payload, game.port))[0] == "TX", i
            if payload[0] == gf.ID_OPEN_CONNECTION_REPLY_2:
                assert set(game_clients(xdp)) == {(CLIENT, CLIENT_PORT, VIP, game.port)}
            elif not game_clients(xdp):
                assert payload[0] < 0x80, f"{i}: only offline replies before reply 2"
    assert validated(xdp, game)
