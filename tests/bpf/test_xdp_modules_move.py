"""Issue 13 deliver 2: a validated client whose route moves to another POP keeps playing.

Two POPs (two loaded programs, each with its own maps). The client is validated at
POP A by the handshake. Its route moves: POP B has never seen the handshake. B lets
its game data through on the rule's budget (well-formed packets only), so the game
server's fou_map learns the move (kernel tier), and the server's authenticated
session replies through B validate the client at B; from then on the budget does
not apply to it. A spoofer sending the same well-formed data gains no more than the
budget, and a session reply needs the FOU key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from xdp_harness import CLIENT, GS, Xdp
from xdp_modules_harness import (
    CLIENT_PORT,
    GAMES,
    Game,
    from_service,
    game_clients,
    games_loaded,
    module_split,
    send_forward,
    send_return,
    validated,
)

from bifrost.xdp import maps_def

pytestmark = pytest.mark.bpf


@pytest.fixture
def pops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Xdp, Xdp]]:
    mk = tmp_path_factory.mktemp
    with games_loaded(mk("pop-a")) as a, games_loaded(mk("pop-b")) as b:
        yield a, b


@pytest.mark.parametrize("name", sorted(GAMES))
def test_client_keeps_playing_when_its_route_moves(pops: tuple[Xdp, Xdp], name: str) -> None:
    a, b = pops
    game: Game = GAMES[name]
    first = next(iter(game.handshakes.values()))
    assert send_forward(a, game, first)[0] == "TX"
    assert send_return(a, GS, from_service(game.proof(CLIENT, CLIENT_PORT), game.port))[0] == "TX"
    assert validated(a, game)
    # The route moves: B knows nothing of the client, and forwards its game data on the
    # rule's budget (exact FOU bytes: send_forward checks them), so fou_map can learn.
    assert game_clients(b) == {}
    for _ in range(3):
        assert send_forward(b, game, game.data)[0] == "TX"
    # The server's replies now come through B, authenticated: B validates the client.
    assert send_return(b, GS, from_service(game.session, game.port))[0] == "TX"
    assert (CLIENT, CLIENT_PORT, "198.51.100.10", game.port) in game_clients(b)
    assert validated(b, game), "every packet passes, however much of the budget is left"


def test_a_spoofer_gains_no_more_than_the_budget(pops: tuple[Xdp, Xdp]) -> None:
    """Spoofed well-formed game data at the POP a client moved to: a second's worth of
    the per-rule budget gets through, then nothing more than what refills; the moved
    client, validated by the server's reply, is not held back by the spent budget."""
    _, b = pops
    game = GAMES["steam"]
    n = 4 * maps_def.GAME_HANDSHAKE_PPS
    split = module_split(b, game, n, src="203.0.113.99")
    assert split.passed >= maps_def.GAME_HANDSHAKE_PPS - 1
    assert split.passed <= maps_def.GAME_HANDSHAKE_PPS + split.refill, split
    assert game_clients(b) == {}, "forwarding on the budget validates nothing"
    # The server's reply to the spoofed address: none comes (no session there). The moved
    # client's reply does, and validates it while the budget is spent.
    assert send_return(b, GS, from_service(game.session, game.port))[0] == "TX"
    assert (module_split(b, game, n).passed, module_split(b, game, n).dropped) == (n, 0)
