"""The fleet inventory (TOML): POPs and game servers, their SSH identities, groups.

Example::

    [fleet]
    canary = "pop1"                  # first host of every apply (default: the first POP)
    connect_timeout = 10             # seconds

    [groups]
    eu = ["pop1", "gs1"]

    [host.pop1]
    address = "192.0.2.1"
    port = 22
    user = "root"
    host_key = "ssh-ed25519 AAAAC3Nz..."   # its known_hosts key; never learned on first use
    role = "pop"                     # or "gameserver"
    config = "hosts/pop1.toml"       # its bifrost.toml, kept here (relative to this file)

Errors name the key and the value, like the host config's (``bifrost.config_schema``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from bifrost import config as hostconfig
from bifrost.config_schema import ConfigError, Reader, read_toml

ROLES = ("pop", "gameserver")


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    host_key: paramiko.PKey
    role: str
    config: Path  # the host's bifrost.toml, kept on the back-end

    def config_text(self) -> str:
        return self.config.read_text()


@dataclass(frozen=True)
class Inventory:
    source: Path
    hosts: dict[str, Host]  # in file order
    groups: dict[str, tuple[str, ...]]
    canary: str | None
    connect_timeout: float

    def select(self, names: list[str] | None = None) -> list[Host]:
        """Hosts named (a host or a group name each), in inventory order; none: all."""
        if not names:
            return list(self.hosts.values())
        wanted: set[str] = set()
        for n in names:
            if n in self.hosts:
                wanted.add(n)
            elif n in self.groups:
                wanted.update(self.groups[n])
            else:
                known = ", ".join([*self.hosts, *self.groups])
                raise ConfigError(f"{n!r}: no such host or group in {self.source} ({known})")
        return [h for n, h in self.hosts.items() if n in wanted]


def _host_key(r: Reader) -> paramiko.PKey:
    value = r.string("host_key")
    parts = value.split()
    if len(parts) < 2:
        raise r.fail("host_key", value, "expected a known_hosts key like 'ssh-ed25519 AAAA...'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError) as e:
        raise r.fail("host_key", value, f"not a usable SSH public key ({e})") from None


def _config(r: Reader, base: Path, role: str) -> Path:
    value = r.string("config")
    path = (base / value).resolve()
    cfg = hostconfig.load(path)  # its own errors name the file, key and value
    if role == "pop" and cfg.xdp is None:
        raise r.fail("config", value, "a pop's config needs an [xdp] section")
    if role == "gameserver" and cfg.xdp is not None:
        raise r.fail("config", value, "a gameserver's config has no [xdp] section (POPs only)")
    return path


def _host(name: str, r: Reader, base: Path) -> Host:
    address = r.string("address")
    if not address or any(c.isspace() for c in address):
        raise r.fail("address", address, "expected a host name or an IP address")
    role = r.string("role", choices=ROLES)
    host = Host(
        name=name,
        address=address,
        port=r.port("port", 22),
        user=r.string("user", "root"),
        host_key=_host_key(r),
        role=role,
        config=_config(r, base, role),
    )
    r.done()
    return host


def parse(data: dict[str, Any], source: Path) -> Inventory:
    top = Reader(data)
    fleet = top.section("fleet", optional=True) or Reader({}, "fleet")
    hosts_sec = top.section("host")
    assert hosts_sec is not None
    hosts: dict[str, Host] = {}
    for name in list(hosts_sec.data):
        sec = hosts_sec.section(name)
        assert sec is not None
        hosts[name] = _host(name, sec, source.parent)
    hosts_sec.done()
    if not hosts:
        raise ConfigError("host: no host in the inventory (add a [host.NAME] table)")

    groups: dict[str, tuple[str, ...]] = {}
    groups_sec = top.section("groups", optional=True)
    if groups_sec is not None:
        for gname in list(groups_sec.data):
            if gname in hosts:
                raise groups_sec.fail(gname, groups_sec.data[gname], "a group named like a host")
            members = groups_sec.items(gname, str)
            for m in members:
                if m not in hosts:
                    raise groups_sec.fail(gname, members, f"{m!r} is not a host of the inventory")
            groups[gname] = tuple(members)
        groups_sec.done()

    canary = fleet.string("canary", None) if fleet.has("canary") else None
    if canary is not None and canary not in hosts:
        raise fleet.fail("canary", canary, "not a host of the inventory")
    inv = Inventory(
        source=source,
        hosts=hosts,
        groups=groups,
        canary=canary,
        connect_timeout=fleet.number("connect_timeout", 10.0, lo=0.1),
    )
    fleet.done()
    top.done()
    return inv


def load(path: Path) -> Inventory:
    return parse(read_toml(path, "inventory"), path.resolve())
