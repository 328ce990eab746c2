"""The [xdp] section: typed values, and errors that name the key and the value."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib

import pytest

from bifrost.config import ConfigError, parse
from bifrost.xdp import maps, maps_def

pytestmark = pytest.mark.unit

GOOD = """
[auth]
keys = ["0123456789abcdef", "fedcba9876543210"]

[xdp]
modules = ["srcds"]
interface = "eth0"
pop_address = "198.51.100.1"
fou_port = 5555
ipv6 = "drop"
game_servers = ["10.0.0.9"]
anycast = ["198.51.100.12"]
block = ["203.0.113.0/24"]
allow = ["203.0.113.7"]
rate_limit_pps = 100

[[xdp.rule]]
name = "cs2"
anycast = "198.51.100.10"
ports = ["27015-27017", 27020]
game_server = "10.0.0.2"
cache = true
modules = ["srcds"]

[[xdp.rule]]
name = "web"
anycast = "198.51.100.11"
proto = "tcp"
game_server = "10.0.0.3"
fou_port = 6000
rate_limit_pps = 0
"""


def load(text: str):
    return parse(tomllib.loads(text)).xdp


def test_good_config() -> None:
    x = load(GOOD)
    assert x.interface == "eth0" and x.ipv6 == "drop"
    assert [r.id for r in x.rules] == [1, 2]
    cs2, web = x.rules
    assert cs2.port_keys() == [27015, 27016, 27017, 27020]
    assert web.port_keys() == [0], "no ports: every port"
    assert cs2.rate_limit_pps == 100 and web.rate_limit_pps == 0
    assert web.fou_port == 6000 and cs2.fou_port == 5555
    assert [str(a) for a in x.all_game_servers()] == ["10.0.0.2", "10.0.0.3", "10.0.0.9"]
    assert ipaddress.IPv4Address("198.51.100.12") in x.all_anycast()


def test_desired_map_content() -> None:
    want = maps.desired(load(GOOD))
    assert len(want["rule_slots"]) + len(want["rule_overflow"]) == 5, "one per port key"
    idx = maps_def.rule_slot_index(ipaddress.IPv4Address("198.51.100.10").packed, 27016, 17)
    slot = maps_def.BY_NAME["rule_slot"].unpack(want["rule_slots"][idx.to_bytes(4, "little")])
    assert slot["port"] == 27016 and slot["proto"] == 17 and slot["rule_id"] == 1
    rule = maps_def.BY_NAME["rule"].unpack(want["rules"][(1).to_bytes(4, "little")])
    assert rule["id"] == 1 and rule["flags"] == maps_def.RULE_CACHE
    assert rule["rate_cost_ns"] == 10_000_000 and rule["rate_burst_ns"] == 1_000_000_000
    bits = maps_def.BY_NAME["rule_modules"].unpack(want["rule_modules"][(1).to_bytes(4, "little")])
    assert bits["bits"] == maps_def.MODULE_BITS["srcds"]
    s = maps_def.BY_NAME["settings"].unpack(want["settings"][bytes(4)])
    assert s["flags"] == maps_def.SET_HAVE_FIREWALL | maps_def.SET_AUTH
    assert s["ipv6_policy"] == maps_def.IPV6_DROP and s["fou_port"] == 5555


def test_auth_keys_and_flood_settings_in_force() -> None:
    """settings[gen] carries every key (send key first, unused slots repeat it) and
    the auth flag, so a key change switches with the config generation."""
    x = load(GOOD)
    assert x.auth_keys == (bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210"))
    s = maps_def.BY_NAME["settings"].unpack(maps.desired(x)["settings"][bytes(4)])
    assert s["flags"] == maps_def.SET_HAVE_FIREWALL | maps_def.SET_AUTH
    k1, k2 = x.auth_keys
    assert s["auth_keys"] == k1 + k2 + k1 + k1
    assert s["flood_new_sources"] == 1000
    assert (s["flood_cost_ns"], s["flood_burst_ns"]) == (1_000_000, 1_000_000_000)
    tuned = load(
        GOOD.replace(
            "rate_limit_pps = 100\n",
            "rate_limit_pps = 100\nflood_new_sources_pps = 50\nflood_budget_pps = 10\n",
            1,
        )
    )
    s = maps_def.BY_NAME["settings"].unpack(maps.desired(tuned)["settings"][bytes(4)])
    assert (s["flood_new_sources"], s["flood_cost_ns"]) == (50, 100_000_000)


def test_auth_off_is_todays_behaviour_and_refuses_game_modules() -> None:
    """No [auth]: settings without the flag or keys; a rule with a game module is
    refused, naming the rule and the module (validation needs authenticated FOU)."""
    no_modules = GOOD.split("[xdp]", 1)[1].replace('cache = true\nmodules = ["srcds"]', "")
    x = load("[xdp]" + no_modules)
    assert x.auth_keys == ()
    s = maps_def.BY_NAME["settings"].unpack(maps.desired(x)["settings"][bytes(4)])
    assert s["flags"] == maps_def.SET_HAVE_FIREWALL and s["auth_keys"] == bytes(32)
    with pytest.raises(
        ConfigError,
        match=r"^xdp\.rule\[0\]\.modules: rule 'cs2' enables game module 'srcds', which needs "
        r"\[auth\]",
    ):
        load("[xdp]" + GOOD.split("[xdp]", 1)[1])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('ipv6 = "drop"', 'ipv6 = "maybe"'), "xdp.ipv6 = 'maybe'"),
        (('pop_address = "198.51.100.1"', 'pop_address = "nope"'), "xdp.pop_address = 'nope'"),
        (
            ('ports = ["27015-27017", 27020]', 'ports = ["27020-27015"]'),
            "xdp.rule[0].ports[0] = '27020-27015'",
        ),
        (
            ('block = ["203.0.113.0/24"]', 'block = ["300.1.1.0/24"]'),
            "xdp.block[0] = '300.1.1.0/24'",
        ),
        (('proto = "tcp"', 'proto = "sctp"'), "xdp.rule[1].proto = 'sctp'"),
        (
            ("rate_limit_pps = 100\n", "rate_limit_pps = 100\nflood_new_sources_pps = 0\n"),
            "xdp.flood_new_sources_pps = 0: must be >= 1",
        ),
        (
            ("rate_limit_pps = 100\n", 'rate_limit_pps = 100\nflood_budget_pps = "x"\n'),
            "xdp.flood_budget_pps = 'x': expected an integer",
        ),
        (("cache = true", 'cache = true\ncolour = "red"'), "xdp.rule[0].colour: unknown key"),
        (
            ('modules = ["srcds"]\ninterface', "modules = []\ninterface"),
            "xdp.rule[0].modules = ['srcds']: srcds is not in xdp.modules",
        ),
        (
            ('name = "web"', 'name = "web"\nports = [27016]\ncache = true'),
            "xdp.rule[1].cache = True: caching applies to UDP rules only",
        ),
    ],
)
def test_errors_name_key_and_value(edit: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*edit, 1)
    assert text != GOOD
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(text)


def test_overlapping_rules_rejected() -> None:
    text = GOOD + (
        '\n[[xdp.rule]]\nname = "dup"\nanycast = "198.51.100.10"\nports = [27016]\n'
        'game_server = "10.0.0.5"\n'
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "xdp.rule[2].ports: 198.51.100.10 udp port 27016 is already covered by rule 'cs2'"
        ),
    ):
        load(text)


def test_rules_need_pop_address() -> None:
    with pytest.raises(ConfigError, match=r"xdp\.pop_address: required"):
        load(GOOD.replace('pop_address = "198.51.100.1"\n', ""))


def test_minimal_section_still_parses() -> None:
    x = load('[xdp]\nmodules = ["srcds"]\n')
    assert x.modules == ("srcds",) and x.rules == ()


def test_reload_log_names_key_changes_but_never_the_keys() -> None:
    from bifrost.xdp.service import config_changes

    on = load(GOOD)
    off = dataclasses.replace(on, auth_keys=())
    lines = config_changes(off, on)
    assert lines == ["auth.keys: 0 -> 2 keys (values not logged)"]
    assert not any("0123456789abcdef" in line or "\\x01" in line for line in lines)


def test_addresses_placed_direct_mapped_with_overflow() -> None:
    """addr_slots: each anycast / game-server address at its hash with what it is; a
    slot two addresses share holds the smaller, marked SLOT_OVERFLOW."""
    x = load(GOOD)
    slots = maps.place_addresses(x)
    st = maps_def.BY_NAME["addr_slot"]
    got = {st.unpack(v)["addr"]: st.unpack(v)["flags"] for v in slots.values()}
    assert got[ipaddress.IPv4Address("198.51.100.10").packed] == maps_def.ADDR_ANYCAST
    assert got[ipaddress.IPv4Address("10.0.0.2").packed] == maps_def.ADDR_GAMESERVER
    assert len(got) == 6
    # Two addresses with one index: find a pair, then place them as game servers.
    seen: dict[int, ipaddress.IPv4Address] = {}
    n = 0
    while True:
        a = ipaddress.IPv4Address(f"10.1.{n // 250}.{n % 250 + 1}")
        idx = maps_def.addr_slot_index(a.packed)
        if idx in seen:
            break
        seen[idx] = a
        n += 1
    b = seen[idx]
    pair = dataclasses.replace(x, game_servers=(a, b), anycast=(), rules=())
    placed = maps.place_addresses(pair, gen=1)
    assert list(placed) == [(maps_def.ADDR_SLOTS + idx).to_bytes(4, "little")]
    one = st.unpack(placed[(maps_def.ADDR_SLOTS + idx).to_bytes(4, "little")])
    assert one["addr"] == min(a.packed, b.packed)
    assert one["flags"] == maps_def.ADDR_GAMESERVER | maps_def.SLOT_OVERFLOW


THIRD = """
[[xdp.rule]]
name = "rust"
anycast = "198.51.100.10"
ports = [28015]
game_server = "10.0.0.4"
"""


def test_a_rule_without_a_name_is_refused_naming_it() -> None:
    """A rule's name is its identity (its id in the program): a default taken from the
    position would move to the next rule when one is removed, so there is none."""
    unnamed = GOOD.replace('name = "web"\n', "", 1)
    with pytest.raises(ConfigError) as e:
        load(unnamed)
    msg = str(e.value)
    assert msg.startswith("xdp.rule[1].name: required key is missing"), msg
    assert "'anycast': '198.51.100.11'" in msg, "the message says which rule"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ('"cs2"', "xdp.rule[2].name = 'cs2': also the name of xdp.rule[0]"),
        ('""', "xdp.rule[2].name = '': expected 1..64 of"),
        ('"my rule"', "xdp.rule[2].name = 'my rule': expected 1..64 of"),
        ('"-x"', "xdp.rule[2].name = '-x': expected 1..64 of"),
        ("7", "xdp.rule[2].name = 7: expected a string"),
    ],
)
def test_rule_names_are_unique_and_well_formed(name: str, message: str) -> None:
    text = GOOD + THIRD.replace('"rust"', name, 1)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(text)
