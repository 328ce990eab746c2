"""A2S codec: requests, challenges, answers, split packets; python-a2s reads what we build."""

from __future__ import annotations

import io
import struct

import pytest
from a2s.byteio import ByteReader
from a2s.info import parse_source
from a2s.players import PlayersProtocol
from a2s.rules import RulesProtocol

from bifrost.bifrost_nf import a2s

pytestmark = pytest.mark.unit


def test_info_request_is_25_bytes_and_29_with_challenge():
    assert len(a2s.request("info")) == 25
    assert a2s.request("info", 0x01020304)[25:] == b"\x04\x03\x02\x01"
    assert a2s.parse_request(a2s.request("info")) == a2s.Request("info", None)
    assert a2s.parse_request(a2s.request("info", 7)) == a2s.Request("info", 7)


@pytest.mark.parametrize("kind", ["player", "rules"])
def test_player_rules_ask_for_challenge_with_ff_or_00(kind):
    assert a2s.request(kind)[5:] == b"\xff\xff\xff\xff"
    assert a2s.parse_request(a2s.request(kind)).challenge is None
    assert a2s.parse_request(a2s.request(kind, 0)).challenge is None
    assert a2s.parse_request(a2s.request(kind, 99)).challenge == 99


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff\xff\xff",
        b"\xff\xff\xff\xffX",
        b"\xfe\xff\xff\xffT",
        b"\xff\xff\xff\xffTSource Engine Quer\0",
        b"\xff\xff\xff\xffTSource Engine Query\0\x01",
        b"\xff\xff\xff\xffU\x01",
        b"\xff\xff\xff\xffV\x01\x02\x03\x04\x05",
    ],
)
def test_malformed_requests_raise(data):
    with pytest.raises(a2s.A2SError):
        a2s.parse_request(data)


def test_challenge_is_9_bytes_and_parses_back():
    c = a2s.challenge(0xA1B2C3D4)
    assert len(c) == 9 and c[:5] == b"\xff\xff\xff\xff\x41"
    assert a2s.parse_challenge(c) == 0xA1B2C3D4
    assert a2s.parse_challenge(c + b"x") is None
    assert a2s.parse_challenge(a2s.request("player")) is None


def test_info_roundtrip_and_python_a2s_reads_it():
    info = a2s.Info("My server", "de_dust2", "csgo", "CS", app_id=730, players=3,
                    max_players=24, bots=1, port=27015, steam_id=1234, keywords="a,b",
                    game_id=730)  # fmt: skip
    data = a2s.build_info(info)
    assert a2s.parse_info(data) == info
    theirs = parse_source(ByteReader(io.BytesIO(data[5:]), endian="<", encoding="utf-8"), 0.0)
    assert (theirs.server_name, theirs.map_name, theirs.player_count) == (
        "My server",
        "de_dust2",
        3,
    )
    assert (theirs.port, theirs.steam_id, theirs.keywords, theirs.game_id) == (
        27015,
        1234,
        "a,b",
        730,
    )


def test_players_roundtrip_and_python_a2s_reads_them():
    players = [a2s.Player("alice", 10, 61.5, 0), a2s.Player("bob", -2, 3.0, 1)]
    data = a2s.build_players(players)
    assert a2s.parse_players(data) == players
    reader = ByteReader(io.BytesIO(data[5:]), endian="<", encoding="utf-8")
    theirs = PlayersProtocol.deserialize_response(reader, data[4], 0.0)
    assert [(p.name, p.score) for p in theirs] == [("alice", 10), ("bob", -2)]


def test_rules_split_join_and_python_a2s_reads_them():
    rules = {f"rule{i}": "v" * 30 for i in range(200)}
    data = a2s.build_rules(rules)
    packets = a2s.split(data, answer_id=42)
    assert len(packets) > 1 and all(len(p) <= a2s.PACKET_MAX for p in packets)
    parts = [a2s.parse_split(p) for p in packets]
    assert {p.answer_id for p in parts} == {42} and [p.number for p in parts] == list(
        range(len(parts))
    )
    assert a2s.join(list(reversed(packets))) == data
    assert a2s.parse_rules(a2s.join(packets)) == rules
    reader = ByteReader(io.BytesIO(data[5:]), endian="<", encoding="utf-8")
    assert RulesProtocol.deserialize_response(reader, data[4], 0.0) == rules


def test_small_answer_is_not_split_and_incomplete_split_is_refused():
    small = a2s.build_rules({"a": "b"})
    assert a2s.split(small, 1) == [small]
    packets = a2s.split(a2s.build_rules({f"k{i}": "x" * 50 for i in range(100)}), 5)
    with pytest.raises(a2s.A2SError):
        a2s.join(packets[:-1])
    with pytest.raises(a2s.A2SError):
        a2s.parse_split(b"\xfe\xff\xff\xff" + struct.pack("<IBBH", 1 << 31, 2, 0, 1400))


def test_truncated_answers_raise():
    data = a2s.build_info(a2s.Info("n", "m", "f", "g"))
    with pytest.raises(a2s.A2SError):
        a2s.parse_info(data[:12])
    with pytest.raises(a2s.A2SError):
        a2s.parse_players(a2s.build_players([a2s.Player("x")])[:-3])
