"""`bifrost fleet keygen|plan|apply|status|agent`: the back-end and its host-side agent."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bifrost.fleet import defaults, keys

if TYPE_CHECKING:
    from bifrost.fleet.inventory import Host
    from bifrost.fleet.orchestrate import Fleet

# Every `bifrost` command builds this parser: what only the back-end needs (Fabric,
# Paramiko) is imported when a back-end command runs, not for `bifrost xdp ...`.


def _on_fleet(args: argparse.Namespace, action: Callable[[Fleet, list[Host]], int]) -> int:
    """Run one back-end action on the hosts named (all by default); close every connection."""
    from bifrost.fleet import inventory as inv
    from bifrost.fleet.orchestrate import Fleet

    inventory = inv.load(Path(args.inventory))
    fleet = Fleet(inventory, keys.key_path(Path(args.state_dir)))
    try:
        return action(fleet, inventory.select(args.hosts))
    finally:
        fleet.close()


def cmd_keygen(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    key = keys.keygen(state)
    print(f"# key: {key}; on every POP and game server, append to the user's authorized_keys:")
    print(keys.authorized_keys_line(state, args.agent_command))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    return _on_fleet(args, lambda fleet, hosts: fleet.plan(hosts))


def cmd_apply(args: argparse.Namespace) -> int:
    return _on_fleet(args, lambda f, hosts: f.apply(hosts, args.canary, args.health_window))


def cmd_status(args: argparse.Namespace) -> int:
    return _on_fleet(args, lambda fleet, hosts: fleet.status(hosts))


def cmd_agent(args: argparse.Namespace) -> int:
    from bifrost.fleet import agent

    return agent.cmd_agent(args)


AGENT_HELP = """\
The forced command of the back-end's key on a POP or game server. sshd runs it for
every connection made with that key, whatever command was asked for; the request
arrives in SSH_ORIGINAL_COMMAND and only these verbs run:

    status               JSON: version, role, config, modules, program, daemons,
                         counters, kernel module (DKMS's and the loaded one)
    plan                 JSON: diffs of the config on stdin against what runs, and
                         whether the XDP object or the kernel module needs a rebuild
                         (or the module only a reload: an older one is loaded)
    stage-config         keep the config on stdin for the next apply (validated first);
                         print its id
    apply ID             run the staged config whose id stage-config printed: rebuild
                         the XDP object and, through DKMS, the kernel module where
                         needed (reload a loaded module older than the installed
                         release), then swap; on a failure put back the previous one
    rollback             back to the config that ran before the last apply (and
                         DKMS's install of the module version that apply replaced)
    health [SECONDS]     JSON: program attached, daemons up, game traffic served,
                         the kernel module loaded at the release's version (loaded
                         and installed versions reported)

Anything else is refused with exit status 2; a verb that fails exits 3, an
unhealthy host 4."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `bifrost fleet ...` to `bifrost`."""
    p = sub.add_parser(
        "fleet",
        help="the back-end: drive every POP and game server over SSH",
        description="The back-end drives the POPs and game servers of an inventory over SSH "
        "with one key, which each host restricts to the agent's verbs (a forced command).",
    )
    fs = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    def backend(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        sp = fs.add_parser(name, help=help, description=help)
        sp.add_argument(
            "--state-dir",
            default=str(defaults.BACKEND_STATE),
            help=f"the back-end's state: its SSH key (default: {defaults.BACKEND_STATE})",
        )
        sp.set_defaults(func=fn)
        return sp

    def targets(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-i",
            "--inventory",
            default=str(defaults.INVENTORY),
            help=f"the fleet inventory (default: {defaults.INVENTORY})",
        )
        sp.add_argument(
            "hosts", nargs="*", metavar="HOST|GROUP", help="only these (default: every host)"
        )

    k = backend(
        "keygen",
        cmd_keygen,
        "create the back-end's ed25519 key (once) and print the authorized_keys line for the "
        "hosts: restrict (no pty, no forwarding) and the agent as forced command",
    )
    k.add_argument(
        "--agent-command",
        default=defaults.AGENT_COMMAND,
        help=f"the forced command on the hosts (default: {defaults.AGENT_COMMAND!r}; "
        "add -c CONFIG or --state-dir where the host keeps them elsewhere)",
    )
    targets(
        backend(
            "plan",
            cmd_plan,
            "show, per host, the diff of its config and of its module_config.h against what "
            "it runs, whether its XDP object would be rebuilt, and whether its kernel module "
            "would be (DKMS has not installed the host's bifrost release for the running "
            "kernel) or only reloaded (an older module than the installed release is "
            "loaded); changes nothing",
        )
    )
    a = backend(
        "apply",
        cmd_apply,
        "reach every host and stage its config first (an unreachable host or a wrong host "
        "key changes nothing), then per host, canary first: rebuild the XDP object and, "
        "through DKMS, the kernel module where needed (a failed rebuild changes nothing; a "
        "loaded module older than the installed release is reloaded), install the config, "
        "regenerate module_config.h, swap the XDP object, check health (program attached, "
        "daemons up, served counters moving, the module loaded at the release's version); "
        "a failure rolls that host back and stops",
    )
    targets(a)
    a.add_argument("--canary", metavar="HOST", help="first host (default: fleet.canary)")
    a.add_argument(
        "--health-window",
        type=float,
        default=defaults.HEALTH_WINDOW_S,
        metavar="SECONDS",
        help=f"how long a POP has to serve a packet after the change "
        f"(default: {defaults.HEALTH_WINDOW_S:g})",
    )
    targets(
        backend(
            "status",
            cmd_status,
            "one table across the fleet: version, config, modules, attached program, kernel "
            "module (DKMS's version, the loaded one), daemon states, counters",
        )
    )
    ag = fs.add_parser(
        "agent",
        help="the host side: the forced command of the back-end's key",
        description=AGENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ag.add_argument(
        "--state-dir",
        default=str(defaults.AGENT_STATE),
        help=f"staged/current/previous builds and configs (default: {defaults.AGENT_STATE})",
    )
    ag.set_defaults(func=cmd_agent)
