"""The `dkms` command of a fleet-lab host: the fleet tests' one stand-in, at the command
boundary, because the test machine cannot run real DKMS for a lab host (DKMS state,
/usr/src and /lib/modules are global to the machine and shared by every engineer,
and the running kernel has no headers and loads no modules).

The lab binds it over /usr/sbin/dkms inside each host's sshd mount namespace, with
that host's own directories over /usr/src and /var/lib/dkms, so the agent's code runs
unchanged. It answers the subcommands the agent uses the way dkms 3 does (`status`,
`add`, `build`, `install`, `remove`), keeps its state in /var/lib/dkms/stub.json,
logs every call to /var/lib/dkms/calls.log, and fails `build` (as a compiler error
would) while /var/lib/dkms/fail-build exists.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

STATE_DIR = Path("/var/lib/dkms")
SRC = Path("/usr/src")
STATE = "stub.json"  # [[module, version, kernel or null, state], ...]
CALLS = "calls.log"  # one shlex-joined argv a line
FAIL_BUILD = "fail-build"

Entry = list[str | None]


def load(state_dir: Path = STATE_DIR) -> list[Entry]:
    f = state_dir / STATE
    return list(json.loads(f.read_text())) if f.exists() else []


def save(entries: list[Entry], state_dir: Path = STATE_DIR) -> None:
    (state_dir / STATE).write_text(json.dumps(entries))


def calls(state_dir: Path) -> list[list[str]]:
    f = state_dir / CALLS
    return [shlex.split(line) for line in f.read_text().splitlines()] if f.exists() else []


def _name(arg: str) -> tuple[str, str]:
    module, _, version = arg.partition("/")
    if not module or not version:
        raise SystemExit(f"Error! Invalid module/version: {arg}")
    return module, version


def _kernel(args: list[str]) -> str:
    return args[args.index("-k") + 1] if "-k" in args else ""


def _set(entries: list[Entry], m: str, v: str, k: str | None, state: str) -> list[Entry]:
    out = [e for e in entries if e[:3] != [m, v, k] and not (e[:2] == [m, v] and e[2] is None)]
    return [*out, [m, v, k, state]]


def _build(entries: list[Entry], m: str, v: str, k: str) -> list[Entry]:
    if (STATE_DIR / FAIL_BUILD).exists():
        print(f"Building module:\nError! Bad return status for module build on kernel: {k}")
        print(f"Consult /var/lib/dkms/{m}/{v}/build/make.log for more information.")
        raise SystemExit(10)
    return _set(entries, m, v, k, "built")


def main(argv: list[str]) -> int:
    with open(STATE_DIR / CALLS, "a") as log:
        log.write(shlex.join(argv) + "\n")
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    entries = load()
    if cmd == "status":
        for m, v, k, st in entries:
            if args and m != args[0]:
                continue
            print(f"{m}/{v}: {st}" if k is None else f"{m}/{v}, {k}, x86_64: {st}")
        return 0
    if cmd not in ("add", "build", "install", "remove") or not args:
        print(f"Error! stub dkms: unsupported call {shlex.join(argv)}", file=sys.stderr)
        return 2
    m, v = _name(args[0])
    known = any(e[:2] == [m, v] for e in entries)
    if cmd == "add":
        if not (SRC / f"{m}-{v}" / "dkms.conf").exists():
            print(f"Error! Could not find module source directory {SRC}/{m}-{v}", file=sys.stderr)
            return 1
        (STATE_DIR / m / v / "source").mkdir(parents=True, exist_ok=True)
        if not known:
            entries.append([m, v, None, "added"])
    elif not known:
        print(f"Error! The module/version combo: {m}-{v} is not located in the DKMS tree.")
        return 3
    elif cmd == "remove":
        entries = [e for e in entries if e[:2] != [m, v]]
        shutil.rmtree(STATE_DIR / m / v, ignore_errors=True)
    else:
        k = _kernel(args)
        if not any(e[:3] == [m, v, k] for e in entries):
            entries = _build(entries, m, v, k)
        if cmd == "install":
            entries = [[*e[:3], "built"] if e[0] == m and e[2] == k else e for e in entries]
            entries = _set(entries, m, v, k, "installed")
    save(entries)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
