"""Game modules from the config to the program: rules enable them by name, the
unvalidated-handshake budget caps a spoofed handshake flood per rule, the validated
clients' table fills without evicting a live client, and a module not compiled in
does nothing."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import game_fixtures as gf
import pytest
from xdp_harness import CLIENT, GS, KEY, VIP, Xdp, client_frame, loaded
from xdp_modules_harness import (
    ALL_MODULES,
    GAMES,
    RULE_STEAM,
    RUST_PORT,
    budget_refill,
    client_key,
    from_service,
    game_clients,
    game_set_index,
    games_config,
    rule_id,
    send_forward,
    send_return,
    set_expiry,
    set_flags,
    to_service,
    validated,
)

from bifrost import config as host_config
from bifrost.config_schema import ConfigError
from bifrost.xdp import libbpf, maps, maps_def

pytestmark = pytest.mark.bpf
XDP_GAMES = True  # conftest's xdp: xdp_modules_harness.games_loaded()


def test_rules_enable_modules_through_the_config(xdp: Xdp, tmp_path: Path) -> None:
    """A TOML [xdp] section naming each module: parsed, applied, each rule's bit set."""
    toml = tmp_path / "bifrost.toml"
    xdp_section = (
        '[xdp]\nmodules = ["srcds", "rust", "steam", "ue3"]\npop_address = "198.51.100.1"\n'
        + "".join(
            f'[[xdp.rule]]\nname = "{name}"\nanycast = "198.51.100.10"\nports = [{port}]\n'
            f'game_server = "10.0.0.2"\nmodules = {mods}\n'
            for name, port, mods in (
                ("rust", 28015, '["rust"]'),
                ("cs2", 27015, '["steam"]'),
                ("unreal", 7777, '["ue3"]'),
                ("both", 28016, '["rust", "steam"]'),
            )
        )
    )
    # Without [auth] no module may be enabled: it would validate from spoofable FOU.
    toml.write_text(xdp_section)
    with pytest.raises(
        ConfigError, match=r"xdp\.rule\[0\]\.modules: rule 'rust' .* needs \[auth\]"
    ):
        host_config.load(toml)
    toml.write_text(f'[auth]\nkeys = ["{KEY.hex()}"]\n' + xdp_section)
    cfg = host_config.load(toml).xdp
    assert cfg is not None
    xdp.apply(cfg)
    ids = {n: i for i, n in maps.rule_names(xdp.ms, cfg).items()}
    in_force = maps.in_force(xdp.ms, "rule_modules")
    unpack = maps_def.BY_NAME["rule_modules"].unpack
    bits = {name: unpack(in_force[i.to_bytes(4, "little")])["bits"] for name, i in ids.items()}
    b = maps_def.MODULE_BITS
    assert bits == {
        "rust": b["rust"],
        "cs2": b["steam"],
        "unreal": b["ue3"],
        "both": b["rust"] | b["steam"],
    }
    # And they act: a malformed RakNet packet to the rust rule is dropped.
    verdict = xdp.run(client_frame(to_service(gf.raknet_datagram()[:3], 28015))).verdict
    assert verdict == "DROP"
    assert xdp.counts()[(ids["rust"], "drop_module")] == 1


def test_handshake_budget_caps_unvalidated_handshakes(xdp: Xdp) -> None:
    """GAME_HANDSHAKE_PPS per rule and CPU (a second's burst), no per-source state.

    RakNet's 1492-byte MTU probe is forwarded by the module and then dropped as too
    big for the 1500-byte link (drop_too_big, the frame unchanged), so one
    BPF_PROG_TEST_RUN repeats it on one CPU and the counters split module vs. budget.
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rid = rule_id(xdp, "rust")
    n = 3 * maps_def.GAME_HANDSHAKE_PPS
    frames = [client_frame(to_service(gf.raknet_request1(1492), RUST_PORT, src=f"192.0.2.{i}"))
              for i in (60, 61)]  # fmt: skip
    res = xdp.run(frames[0])
    assert res.verdict == "DROP" and xdp.counts()[(rid, "drop_too_big")] == 1
    start = time.monotonic()
    libbpf.test_run(xdp.prog, frames[1], repeat=n)
    refill = budget_refill(time.monotonic() - start)
    counts = xdp.counts()
    passed, refused = counts[(rid, "drop_too_big")] - 1, counts.get((rid, "drop_module"), 0)
    assert passed + refused == n
    # The full burst passes, then only what refilled during the run.
    assert maps_def.GAME_HANDSHAKE_PPS - 1 <= passed <= maps_def.GAME_HANDSHAKE_PPS + refill
    assert refused >= n - maps_def.GAME_HANDSHAKE_PPS - refill
    # No per-source state: the flood inserted nothing anywhere.
    assert game_clients(xdp) == {}
    assert list(xdp.ms["game_clients_overflow"].keys()) == []
    assert list(xdp.ms["rate_limit"].keys()) == []
    # A validated client is not charged: its data passes while the budget is empty.
    reply2 = gf.raknet_reply2(CLIENT, 40000)
    assert send_return(xdp, GS, from_service(reply2, RUST_PORT))[0] == "TX"
    game = GAMES["rust-raknet"]
    for _ in range(10):
        assert send_forward(xdp, game, game.data)[0] == "TX"


def test_module_not_compiled_in_is_inert(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An object built with srcds only (its clients in game_clients, as every module's):
    the rust bit does nothing; built with none, no module map exists."""
    with loaded(tmp_path_factory.mktemp("none"), modules=()) as x:
        assert not {"game_clients", "game_clients_overflow", "game_handshake_budget"} & set(
            x.ms.maps
        )
    with loaded(tmp_path_factory.mktemp("srcds-only"), modules=("srcds",)) as x:
        assert {"game_clients", "game_clients_overflow", "game_handshake_budget"} <= set(x.ms.maps)
        x.ms["rule_modules"].update(
            (1).to_bytes(4, "little"),
            maps_def.BY_NAME["rule_modules"].pack(bits=maps_def.MODULE_BITS["rust"]),
        )
        frame = client_frame(to_service(gf.raknet_datagram(), 27015))
        assert x.run(frame).verdict == "TX"
    assert set(ALL_MODULES) == set(maps_def.AVAILABLE_MODULES)


def test_full_set_overflows_and_never_replaces_a_live_client(xdp: Xdp) -> None:
    """Six clients whose keys share a set: four ways there, two in the overflow LRU (the
    set marked), all six validated; an expired way is reused before the overflow."""
    by_set: dict[int, list[int]] = {}
    for port in range(1024, 65536):
        by_set.setdefault(game_set_index(CLIENT, port, VIP, RUST_PORT), []).append(port)
    idx, ports = next((i, p[:7]) for i, p in by_set.items() if len(p) >= 7)
    game = GAMES["rust-raknet"]

    def validate(port: int) -> None:
        send_return(xdp, GS, from_service(gf.raknet_reply2(CLIENT, port), RUST_PORT, dport=port))

    for port in ports[:6]:
        validate(port)
    ways = game_clients(xdp)
    assert {k[1] for k in ways} == set(ports[:4]) and {w.set for w in ways.values()} == {idx}
    assert set_flags(xdp, idx) & maps_def.GAME_SET_OVERFLOW
    overflow = {client_key(CLIENT, p, VIP, RUST_PORT) for p in ports[4:6]}
    assert set(xdp.ms["game_clients_overflow"].keys()) == overflow
    for port in ports[:6]:
        assert send_forward(xdp, game, game.data, sport=port)[0] == "TX", port
    assert not validated(xdp, game, sport=ports[6])
    # Expire the first way: the seventh client takes it, not the overflow.
    set_expiry(xdp, ways[(CLIENT, ports[0], VIP, RUST_PORT)], 1)
    validate(ports[6])
    assert (CLIENT, ports[6], VIP, RUST_PORT) in game_clients(xdp)
    assert len(list(xdp.ms["game_clients_overflow"].keys())) == 2
    assert send_forward(xdp, game, game.data, sport=ports[6])[0] == "TX"
    assert not validated(xdp, game, sport=ports[0]), "expired"


def test_validated_client_has_its_own_rate_bucket(xdp: Xdp) -> None:
    """A validated client's rate bucket lives in its way (the pipeline's own state), not
    in the rate_limit LRU that unknown sources fill: 1 pps, burst 2."""
    cfg = games_config()
    limited = tuple(
        replace(r, rate_limit_pps=1, rate_limit_burst=2) if r.name == RULE_STEAM else r
        for r in cfg.rules
    )
    xdp.apply(replace(cfg, rules=limited))
    game = GAMES["steam"]
    assert send_return(xdp, GS, from_service(gf.steam_connect_ok(), game.port))[0] == "TX"
    frame = client_frame(to_service(game.data, game.port))
    verdicts = [xdp.run(frame).verdict for _ in range(4)]  # well within a second
    assert verdicts == ["TX", "TX", "DROP", "DROP"]
    assert xdp.counts()[(rule_id(xdp, RULE_STEAM), "drop_rate_limit")] == 2
    assert list(xdp.ms["rate_limit"].keys()) == [], "no bucket in the shared LRU"
    # An unvalidated source of the same rule gets an LRU bucket as before.
    assert send_forward(xdp, game, gf.steam_challenge_request(), src="192.0.2.70")[0] == "TX"
    assert len(list(xdp.ms["rate_limit"].keys())) == 1
