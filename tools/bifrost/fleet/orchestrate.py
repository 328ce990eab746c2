"""plan, apply and status across the fleet: what the back-end does with the agents.

apply is all-or-nothing per host and stops at the first failure:
  1. every selected host is reached (host key, key, agent) and every change staged
     before any host changes: an unreachable host, a wrong key, or a host that needs
     a kernel module rebuild and has no dkms changes nothing;
  2. the canary goes first: apply (the agent puts the previous config back itself
     when the build or the swap fails), then the health check; a failed check rolls
     the canary back and stops;
  3. then each other host the same way. A host that fails is rolled back and the
     rest are left as they were: each host is either on its old config or on the
     new one, healthy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.fleet.hoststate import short_sha
from bifrost.fleet.inventory import Host, Inventory
from bifrost.fleet.remote import HostError, Remote

Out = Callable[[str], None]


@dataclass
class Fleet:
    inventory: Inventory
    key: Path
    out: Out = print
    remotes: dict[str, Remote] = field(default_factory=dict)

    def remote(self, host: Host) -> Remote:
        if host.name not in self.remotes:
            self.remotes[host.name] = Remote(host, self.key, self.inventory.connect_timeout)
        return self.remotes[host.name]

    def close(self) -> None:
        for r in self.remotes.values():
            r.close()
        self.remotes.clear()

    # -- plan --------------------------------------------------------------------------

    def plan_one(self, host: Host) -> dict[str, object]:
        return self.remote(host).must("plan", host.config_text()).json()

    def plan(self, hosts: list[Host]) -> int:
        failed = 0
        for host in hosts:
            try:
                p = self.plan_one(host)
            except HostError as e:
                self.out(f"== {e}")
                failed += 1
                continue
            self._show_plan(host, p)
        return 1 if failed else 0

    def _show_plan(self, host: Host, p: dict[str, object]) -> None:
        where = f"{host.role}, {host.address}:{host.port}"
        if not _changes(p):
            self.out(f"== {host.name} ({where}): unchanged")
            return
        self.out(f"== {host.name} ({where}): {'rebuild' if p['rebuild'] else 'no rebuild'}")
        km = _kmod(p)
        if _blocked(p):
            self.out(f"-- kernel module: CANNOT REBUILD {km['module']}: {km['why']}")
        elif km["rebuild"]:
            self.out(
                f"-- kernel module: DKMS rebuild of {km['module']} {km['version']} for "
                f"{km['kernel']}: {km['why']}"
            )
        elif km.get("needed") is False:
            self.out(f"-- kernel module: {km['module']}: not used by this config")
        elif km.get("dkms") is False:
            self.out(f"-- kernel module: {km['module']} {km['loaded']} loaded (no dkms)")
        else:
            self.out(f"-- kernel module: {km.get('module', '')} {km.get('version', '')} unchanged")
        for title, key in (("config", "config_diff"), ("module_config.h", "module_config_diff")):
            diff = str(p[key])
            self.out(f"-- {title}: {'unchanged' if not diff else ''}".rstrip())
            if diff:
                self.out(diff.rstrip("\n"))

    # -- apply -------------------------------------------------------------------------

    def order(self, hosts: list[Host], canary: str | None) -> list[Host]:
        """The canary first: the one named, else the inventory's, else the first POP."""
        name = canary or self.inventory.canary
        if name is None or name not in {h.name for h in hosts}:
            pops = [h for h in hosts if h.role == "pop"]
            name = (pops or hosts)[0].name
        return sorted(hosts, key=lambda h: h.name != name)

    def apply(self, hosts: list[Host], canary: str | None, window_s: float) -> int:
        hosts = self.order(hosts, canary)
        # 1. Reach every host and stage every change before touching any.
        plans: dict[str, dict[str, object]] = {}
        errors = []
        for host in hosts:
            try:
                plans[host.name] = self.plan_one(host)
            except HostError as e:
                errors.append(str(e))
                continue
            if _blocked(plans[host.name]):  # as a failing build would, before any change
                km = _kmod(plans[host.name])
                errors.append(
                    f"{host.name}: cannot rebuild {km['module']}: {km['why']}: apt-get install dkms"
                )
        if errors:
            for e in errors:
                self.out(f"error: {e}")
            self.out("apply: stopped before changing any host")
            return 1
        todo = [h for h in hosts if _changes(plans[h.name])]
        for h in hosts:
            if h not in todo:
                self.out(f"{h.name}: unchanged")
        try:
            for host in todo:
                self.remote(host).must("stage-config", host.config_text())
        except HostError as e:
            self.out(f"error: {e}\napply: stopped before changing any host")
            return 1
        # 2. + 3. One host at a time, the canary first.
        done: list[str] = []
        for i, host in enumerate(todo):
            label = f"{host.name} (canary)" if i == 0 else host.name
            ok = self._apply_one(host, label, window_s)
            if not ok:
                rest = [h.name for h in todo[i + 1 :]]
                self.out(
                    f"apply: stopped at {label}; applied and healthy: {', '.join(done) or 'none'}; "
                    f"not changed: {', '.join(rest) or 'none'}"
                )
                return 1
            done.append(host.name)
        self.out(f"apply: {len(done)} host(s) changed, {len(hosts) - len(done)} unchanged")
        return 0

    def _apply_one(self, host: Host, label: str, window_s: float) -> bool:
        r = self.remote(host)
        try:
            res = r.must(f"apply {short_sha(host.config_text())}")
        except HostError as e:
            self.out(f"error: {e}")  # the agent has put the previous config back
            return False
        for line in res.stdout.splitlines():
            self.out(f"{label}: {line}")
        try:
            h = r.call(f"health {window_s:g}")
            report = h.json() if h.stdout.strip() else {}
        except (HostError, json.JSONDecodeError) as e:
            report, h = {"problems": [str(e)]}, None
        if h is not None and h.exit == 0:
            self.out(f"{label}: healthy ({_health_line(report)})")
            return True
        problems = "; ".join(map(str, report.get("problems") or [])) or (
            h.stderr.strip() if h else "no answer"
        )
        self.out(f"error: {label}: health check failed: {problems}")
        try:
            for line in r.must("rollback").stdout.splitlines():
                self.out(f"{label}: rollback: {line}")
        except HostError as e:
            self.out(f"error: {label}: ROLLBACK FAILED: {e}")
        return False

    # -- status ------------------------------------------------------------------------

    def status(self, hosts: list[Host]) -> int:
        cols = ("HOST", "ROLE", "VERSION", "CONFIG", "MODULES", "PROGRAM", "KERNEL MODULE")
        cols += ("DAEMONS", "COUNTERS")
        rows = []
        failed = 0
        for host in hosts:
            try:
                st = self.remote(host).must("status").json()
            except HostError as e:
                failed += 1
                why = str(e).split(": ", 1)[1]  # in the PROGRAM column, the widest
                rows.append((host.name, host.role, *["-"] * 3, why, *["-"] * 3))
                continue
            rows.append(_status_row(host, st))
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        for r in (cols, *rows):
            self.out("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        return 1 if failed else 0


def _changes(p: dict[str, object]) -> bool:
    return bool(p["config_diff"] or p["module_config_diff"] or p["rebuild"] or _kmod(p)["rebuild"])


def _blocked(p: dict[str, object]) -> bool:
    """The host needs a module rebuild and has no dkms to do it."""
    km = _kmod(p)
    return bool(km["rebuild"]) and km.get("dkms") is False


def _kmod(p: dict[str, object]) -> dict[str, object]:
    return dict(p.get("kmod") or {"rebuild": False})  # type: ignore[call-overload]


def _health_line(st: dict[str, object]) -> str:
    if "served_in_window" in st:
        return f"{st['served_in_window']} packets served in the window"
    return "config installed, daemons up"


def _status_row(host: Host, st: dict[str, object]) -> tuple[str, ...]:
    if not st.get("configured"):
        return (host.name, host.role, str(st["version"]), "none", *["-"] * 5)
    modules = ",".join(st.get("modules") or []) or "none"  # type: ignore[call-overload]
    built = st.get("built_modules")
    if built is not None and built != st.get("modules"):
        modules += f" (built: {','.join(built) or 'none'})"  # type: ignore[arg-type]
    daemons = ", ".join(f"{u.removesuffix('.service')}={s}" for u, s in dict(st["daemons"]).items())  # type: ignore[call-overload]
    program = "-"
    if st.get("role") == "pop":
        auth = str(st.get("auth", "-")).split(" (", 1)[0]  # "off", not its whole warning
        program = f"{str(st.get('program', '-')).split(': ', 1)[-1]}; auth {auth}"
    c = dict(st.get("counters") or {})  # type: ignore[call-overload]
    counters = f"served {c['served']} dropped {c['dropped']}" if c else "-"
    return (
        host.name,
        str(st.get("role")),
        str(st["version"]),
        str(st["config_sha"]),
        modules,
        program,
        str(st.get("kernel_module", "-")),
        daemons,
        counters,
    )
