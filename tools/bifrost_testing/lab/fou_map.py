"""Lab step for fou_map: a client's replies follow it from POP 1 to POP 2.

The lab base's topology routes the service in plain IP; fou_map needs FOU
tunnels from both POPs into the game server and a client whose address stays
the same when it changes POP. So this step builds its own namespaces
(bifrost_testing.fou_map_testbed: the kernel's fou+ipip on both POPs, `bifrost endpoint`
on the game server) next to the base's, and removes them at the end.
"""

from __future__ import annotations

from typing import Any

from bifrost.fou_map.cli import format_table
from bifrost.fou_map.control import TableConfig
from bifrost_testing import fou_map_testbed as tb


def _show(t: tb.Topology, title: str) -> None:
    with t.fou_map() as fm:
        table = format_table(fm.dump())
    print(f"--- {title}\n{table}")
    print(f"replies decapsulated: pop1 {t.pop_rx(1)}, pop2 {t.pop_rx(2)}", flush=True)


def _echo(t: tb.Topology, n: int) -> int:
    s = t.client_socket(0)
    ok = sum(t.echo_once(s, f"hello {i}".encode()) for i in range(n))
    s.close()
    return ok


def run(topo: Any = None) -> str:
    """Show replies following a client from POP 1 to POP 2; returns a one-line verdict."""
    if not tb.loaded():
        tb.load()
    with tb.topology(cfg=TableConfig(ports=(tb.FOU_PORT,))) as t:
        print(tb.__doc__.split("```")[1] if tb.__doc__ else "", flush=True)
        client = tb.client_ip(0)
        print(f"client {client} -> {tb.SERVICE_IP}:{tb.GAME_PORT} via pop1", flush=True)
        _show(t, "table before any traffic")
        before = (t.pop_rx(1), t.pop_rx(2))
        got1 = _echo(t, 3)
        _show(t, f"after 3 echoes via pop1 ({got1} answered)")
        mid = (t.pop_rx(1), t.pop_rx(2))
        t.use_pop(2)
        print(f"client {client} now routes the service via pop2", flush=True)
        got2 = _echo(t, 3)
        _show(t, f"after 3 echoes via pop2 ({got2} answered)")
        after = (t.pop_rx(1), t.pop_rx(2))
    via1 = (mid[0] - before[0], mid[1] - before[1])
    via2 = (after[0] - mid[0], after[1] - mid[1])
    if got1 != 3 or got2 != 3 or via1 != (3, 0) or via2 != (0, 3):
        raise RuntimeError(
            f"replies did not follow the client: via pop1 phase {via1}, via pop2 phase {via2}"
        )
    return "replies followed the client: 3/3 back via pop1, then 3/3 back via pop2"
