"""The Bifrost lab, run inside the test guest by `invoke lab` (python -m bifrost_testing.lab).

It loads both modules, builds the client / POP / game-server topology of
``bifrost_testing.lab.topology`` (diagram there), shows each module's INFO, then calls
each component's lab step, ``bifrost_testing.lab.<comp>.run(topo)``, for the
components that provide one. Every step is reported; any failure makes the
lab exit non-zero.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bifrost_testing.lab.topology import SERVICE_IP, SERVICE_PORT, Topology, build

__all__ = ["SERVICE_IP", "SERVICE_PORT", "Step", "Topology", "main"]

# Component lab steps, in data-path order; each is optional until its owner writes it.
COMPONENT_LABS = (
    "bifrost_testing.lab.xdp",
    "bifrost_testing.lab.bifrost_nf",
    "bifrost_testing.lab.fou_map",
)
# Kernel modules the topology and the components rely on, then Bifrost's own.
HELPER_MODULES = ("veth", "fou", "ipip")
BIFROST_MODULES = ("bifrost_nf", "fou_map")


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


class Lab:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one step, print it, record it; failures are recorded, not raised."""
        start = time.monotonic()
        try:
            detail = fn()
        except Exception as e:
            traceback.print_exc()
            self.steps.append(Step(name, False, f"{type(e).__name__}: {e}"))
            print(f"[FAIL] {name}: {e}", flush=True)
            return None
        took = time.monotonic() - start
        text = detail if isinstance(detail, str) else ""
        self.steps.append(Step(name, True, text))
        print(f"[ OK ] {name} ({took:.1f}s){': ' + text if text else ''}", flush=True)
        return detail

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]


def load_modules() -> str:
    import kmod

    km = kmod.Kmod()
    for name in (*HELPER_MODULES, *BIFROST_MODULES):
        km.modprobe(name)
    loaded = {m.name: m.size for m in km.loaded()}
    missing = [m for m in BIFROST_MODULES if m not in loaded]
    if missing:
        raise RuntimeError(f"not loaded after modprobe: {', '.join(missing)}")
    return ", ".join(f"{m} ({loaded[m]} bytes)" for m in BIFROST_MODULES)


def module_info(topo: Topology, name: str, ns_role: str) -> str:
    """INFO from the init netns and from the netns the module serves in the lab."""
    from bifrost.chardev import Device

    codec = importlib.import_module(f"bifrost.abi.{name}")
    with Device(f"/dev/{name}", codec) as dev:
        info = dev.info()
    with topo.namespaces[ns_role].entered(), Device(f"/dev/{name}", codec) as dev:
        ns_info = dev.info()
    if ns_info["netns_inum"] == info["netns_inum"]:
        raise RuntimeError(f"/dev/{name} opened in {ns_role} reports the init netns")
    nonzero = {k: v for k, v in info["counters"].items() if v}
    counters = f"{len(info['counters'])} counters" + (
        ": " + ", ".join(f"{k}={v}" for k, v in nonzero.items()) if nonzero else ", all zero"
    )
    return (
        f"module {info['module_version']} ABI {info['abi_version']}; "
        f"netns {info['netns_inum']} (init) / {ns_info['netns_inum']} ({ns_role}); "
        f"{counters}"
    )


def check_path(topo: Topology) -> str:
    """Plain routing works: the client reaches the service address by pop1."""
    done = topo.client.run(["ping", "-c", "1", "-W", "2", str(topo.service_ip)], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client cannot ping {topo.service_ip}: {done.stdout}{done.stderr}")
    trace = topo.client.run(["ip", "route", "get", str(topo.service_ip)]).stdout.split("\n")[0]
    return trace.strip()


def describe(topo: Topology) -> str:
    lines = ["namespaces:"]
    for role, ns in topo.namespaces.items():
        lines.append(f"  {role:<11} {ns.name}")
    lines.append("links:")
    for a, a_if, a_cidr, b, b_if, b_cidr in topo.links:
        lines.append(f"  {a}:{a_if} {a_cidr}  <->  {b}:{b_if} {b_cidr}")
    lines.append(f"game service: {topo.service_ip}:{topo.service_port} on gameserver (lo)")
    return "\n".join(lines)


def run_component(topo: Topology, modname: str) -> str:
    mod = importlib.import_module(modname)
    result = mod.run(topo)
    return str(result) if result is not None else "done"


def component_lab_exists(modname: str) -> bool:
    try:
        importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return False
        raise
    return True


def main() -> int:
    if os.environ.get("BIFROST_GUEST") != "1" and not os.path.exists("/proc/modules"):
        print("the lab runs in the test guest: sudo .venv/bin/invoke lab")
        return 2
    lab = Lab()
    print("=== Bifrost lab ===", flush=True)
    lab.step("load modules (python-kmod)", load_modules)
    topo: Topology | None = lab.step("build topology (bifrost.netns)", build)
    if topo is None:
        return summarize(lab, None)
    try:
        print(describe(topo), flush=True)
        lab.step("client reaches the service by pop1", lambda: check_path(topo))
        lab.step("/dev/bifrost_nf INFO", lambda: module_info(topo, "bifrost_nf", "pop1"))
        lab.step("/dev/fou_map INFO", lambda: module_info(topo, "fou_map", "gameserver"))
        for modname in COMPONENT_LABS:
            try:
                present = component_lab_exists(modname)
            except Exception as e:
                lab.steps.append(Step(f"{modname}.run", False, f"import failed: {e}"))
                print(f"[FAIL] {modname}: import failed: {e}", flush=True)
                continue
            if not present:
                print(f"[ -- ] {modname}: not provided yet", flush=True)
                continue
            lab.step(f"{modname}.run", lambda m=modname: run_component(topo, m))
        ip_a = topo.pop1.run(["ip", "-br", "addr"]).stdout
        print("pop1 addresses:\n" + ip_a, flush=True)
    finally:
        topo.close()
    return summarize(lab, topo)


def summarize(lab: Lab, topo: Topology | None) -> int:
    print("\n=== lab summary ===")
    for s in lab.steps:
        print(f"  {'ok  ' if s.ok else 'FAIL'} {s.name}{': ' + s.detail if s.detail else ''}")
    if lab.failed:
        print(f"lab FAILED: {len(lab.failed)} step(s) failed")
        return 1
    print(f"lab OK: {len(lab.steps)} steps")
    # The module's dmesg lines show the netns hooks registering and going away.
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    tail = [ln for ln in dmesg.splitlines() if "bifrost_nf" in ln or "fou_map" in ln][-6:]
    if tail:
        print("dmesg (modules):\n  " + "\n  ".join(tail))
    return 0
