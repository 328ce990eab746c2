"""`bifrost fleet agent`: the forced command of the back-end's key on a POP or game server
(its verbs: see AGENT_HELP in bifrost.fleet.cli, the text of `bifrost fleet agent --help`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bifrost import __version__
from bifrost.fleet import defaults
from bifrost.fleet.hoststate import AgentError, HostState, short_sha

VERBS = ("status", "plan", "stage-config", "apply", "rollback", "health")
MAX_CONFIG = 1 << 20  # a host config is a few KiB; refuse to buffer anything huge
REFUSED = 2  # a request outside the verbs
FAILED = 3  # a verb ran and failed (the message says what state the host is in)
UNHEALTHY = 4
SHA_LEN = len(short_sha(""))


def _stdin_config() -> str:
    data = sys.stdin.read(MAX_CONFIG + 1)
    if len(data) > MAX_CONFIG:
        raise AgentError(f"config on stdin is over {MAX_CONFIG} bytes")
    return data


def status(hs: HostState, kernel_module: bool = True) -> dict[str, object]:
    text = hs.running_text()
    out: dict[str, object] = {"version": __version__, "configured": bool(text)}
    if not text:
        return out
    want = hs.desired(text, str(hs.config))
    info = hs.build_info()
    out |= {
        "role": want.role,
        "config_sha": short_sha(text),
        "modules": want.modules,
        "rules": len(want.cfg.xdp.rules) if want.cfg.xdp else 0,
        "built_modules": info.get("modules"),
        "daemons": hs.units(want.role),
    }
    if kernel_module:  # `dkms status` takes seconds: the table shows it, health needs it not
        km = hs.kernel_module(want.role, want.cfg)
        out["kernel_module"] = km.summary()
        out["kmod"] = km.as_json()
    if want.role == "pop":
        st = hs.xdp("status")
        # `bifrost xdp status` prints the program's line, then whether FOU is authenticated.
        lines = (st.stdout or st.stderr).strip().splitlines() or [""]
        out["program"] = lines[0]
        out["auth"] = next((x.removeprefix("auth: ") for x in lines if x.startswith("auth: ")), "-")
        out["attached"] = st.returncode == 0
        out["counters"] = hs.counters() if st.returncode == 0 else {}
    return out


def health(hs: HostState, window_s: float) -> dict[str, object]:
    """Ready and working: daemons that are enabled are active; on a POP the program is
    attached and, when it has forward rules, serves game traffic within window_s (a POP
    whose rule counters only drop, or do not move, is not healthy)."""
    st = status(hs, kernel_module=False)
    problems = []
    if not st.get("configured"):
        problems.append("no config installed")
    for unit, state in dict(st.get("daemons") or {}).items():  # type: ignore[call-overload]
        if "(enabled)" in state:
            problems.append(f"{unit} is {state}")
    if st.get("role") == "pop":
        if not st.get("attached"):
            problems.append(f"XDP program not attached: {st.get('program')}")
        elif st.get("rules"):
            first = hs.counters()
            deadline = time.monotonic() + window_s
            now = first
            while time.monotonic() < deadline:
                time.sleep(0.2)
                now = hs.counters()
                if now.get("served", 0) > first.get("served", 0):
                    break
            served = now.get("served", 0) - first.get("served", 0)
            dropped = now.get("dropped", 0) - first.get("dropped", 0)
            st["served_in_window"], st["dropped_in_window"] = served, dropped
            if served <= 0:
                problems.append(
                    f"counters not moving: no game packet served in {window_s:g} s "
                    f"({dropped} dropped)"
                )
    st["problems"] = problems
    st["ok"] = not problems
    return st


def _window(args: list[str]) -> float | None:
    """health's one optional argument, a window in seconds; None if it is anything else."""
    if not args:
        return defaults.HEALTH_WINDOW_S
    try:
        w = float(args[0])
    except ValueError:
        return None
    return w if len(args) == 1 and 0 < w <= 60 else None


def run(request: str, hs: HostState) -> int:
    """Run one request (the SSH_ORIGINAL_COMMAND); the exit status of the connection."""
    try:
        argv = shlex.split(request)
    except ValueError:
        argv = []
    verb, args = (argv[0], argv[1:]) if argv else ("", [])
    window = _window(args) if verb == "health" else None
    sha = args[0] if verb == "apply" and len(args) == 1 and _is_sha(args[0]) else None
    if verb == "health":
        allowed = window is not None
    elif verb == "apply":
        allowed = sha is not None
    else:
        allowed = verb in VERBS and not args
    if not allowed:
        print(
            f"bifrost fleet agent: refused {request!r}: this key only runs "
            f"{', '.join(VERBS)} (apply takes the staged config's id, health one window "
            "of 0..60 seconds)",
            file=sys.stderr,
        )
        return REFUSED
    handlers: dict[str, Callable[[], int]] = {
        "status": lambda: _json(status(hs)),
        "plan": lambda: _json(hs.plan(hs.desired(_stdin_config(), "pushed config"))),
        "stage-config": lambda: _print([f"staged {short_sha(hs.stage(_stdin_config()).text)}"]),
        "apply": lambda: _print(hs.apply(str(sha))),
        "rollback": lambda: _print(hs.rollback()),
        "health": lambda: _health(hs, window or defaults.HEALTH_WINDOW_S),
    }
    try:
        return handlers[verb]()
    except (AgentError, ValueError, OSError) as e:
        print(f"bifrost fleet agent: {verb}: {e}", file=sys.stderr)
        return FAILED


def _is_sha(arg: str) -> bool:
    return len(arg) == SHA_LEN and all(c in "0123456789abcdef" for c in arg)


def _health(hs: HostState, window_s: float) -> int:
    st = health(hs, window_s)
    _json(st)
    return 0 if st["ok"] else UNHEALTHY


def _json(obj: object) -> int:
    print(json.dumps(obj))
    return 0


def _print(lines: list[str]) -> int:
    for line in lines:
        print(line)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    request = os.environ.get("SSH_ORIGINAL_COMMAND")
    if request is None:
        print(
            "bifrost fleet agent: no SSH_ORIGINAL_COMMAND: this is the forced command of the "
            "back-end's key in authorized_keys, not an interactive command",
            file=sys.stderr,
        )
        return REFUSED
    return run(request, HostState(Path(args.config), Path(args.state_dir)))
