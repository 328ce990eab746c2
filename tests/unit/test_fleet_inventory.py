"""The fleet inventory's errors name the key and the value; keygen's line; the agent's
refusals (no SSH needed: the agent reads the request from SSH_ORIGINAL_COMMAND)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bifrost import __version__
from bifrost.config_schema import ConfigError
from bifrost.fleet import inventory, keys

pytestmark = pytest.mark.unit

POP = '[xdp]\nmodules = ["srcds"]\ninterface = "eth0"\npop_address = "192.0.2.1"\n'
GS = "[fou_map]\nports = [5555]\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def write(tmp: Path, hosts: str, extra: str = "") -> Path:
    (tmp / "hosts").mkdir(exist_ok=True)
    (tmp / "hosts" / "pop1.toml").write_text(POP)
    (tmp / "hosts" / "gs1.toml").write_text(GS)
    inv = tmp / "fleet.toml"
    inv.write_text(extra + hosts)
    return inv


def host(name: str, kind: str, **over: str) -> str:
    fields = {
        "address": '"192.0.2.10"',
        "host_key": f'"{KEY}"',
        "role": f'"{kind}"',
        "config": f'"hosts/{name}.toml"',
    }
    fields.update(over)
    return f"[host.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()) + "\n"


def test_a_good_inventory(tmp_path: Path) -> None:
    text = host("pop1", "pop", port="2222") + host("gs1", "gameserver")
    inv = inventory.load(
        write(tmp_path, text, '[fleet]\ncanary = "pop1"\n[groups]\neu = ["gs1"]\n')
    )
    assert list(inv.hosts) == ["pop1", "gs1"]
    assert inv.hosts["pop1"].port == 2222 and inv.hosts["gs1"].port == 22
    assert inv.hosts["pop1"].config == (tmp_path / "hosts" / "pop1.toml").resolve()
    assert inv.canary == "pop1"
    assert [h.name for h in inv.select(["eu"])] == ["gs1"]
    assert [h.name for h in inv.select(["pop1", "eu"])] == ["pop1", "gs1"]
    with pytest.raises(ConfigError, match="'nope': no such host or group"):
        inv.select(["nope"])


@pytest.mark.parametrize(
    ("hosts", "extra", "message"),
    [
        (host("pop1", "pop", role='"router"'), "", "host.pop1.role = 'router': must be one of"),
        (host("pop1", "pop", port="0"), "", "host.pop1.port = 0: must be >= 1"),
        (
            host("pop1", "pop", host_key='"ssh-ed25519 !!"'),
            "",
            "host.pop1.host_key = 'ssh-ed25519 !!': not a usable SSH public key",
        ),
        (host("pop1", "pop", host_key='"AAAA"'), "", "host.pop1.host_key = 'AAAA': expected"),
        (host("pop1", "pop", colour='"red"'), "", "host.pop1.colour: unknown key"),
        (host("gs1", "pop"), "", "host.gs1.config = 'hosts/gs1.toml': a pop's config needs"),
        (host("pop1", "gameserver"), "", "host.pop1.config = 'hosts/pop1.toml': a gameserver's"),
        (host("pop1", "pop", config='"hosts/none.toml"'), "", "none.toml: config file does not"),
        (host("pop1", "pop"), '[groups]\neu = ["pop2"]\n', "groups.eu = \\['pop2'\\]: 'pop2' is"),
        (host("pop1", "pop"), '[fleet]\ncanary = "pop7"\n', "fleet.canary = 'pop7': not a host"),
        ("", "", "host: required key is missing"),
    ],
)
def test_bad_inventory_names_key_and_value(
    tmp_path: Path, hosts: str, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        inventory.load(write(tmp_path, hosts, extra))


def test_keygen_prints_a_restricted_line(tmp_path: Path) -> None:
    key = keys.keygen(tmp_path / "state")
    assert key.stat().st_mode & 0o077 == 0
    line = keys.authorized_keys_line(tmp_path / "state", "bifrost -c /etc/b.toml fleet agent")
    assert line.startswith('restrict,command="bifrost -c /etc/b.toml fleet agent" ssh-ed25519 ')
    assert keys.keygen(tmp_path / "state") == key  # kept, not replaced
    with pytest.raises(ValueError, match="no double quote"):
        keys.authorized_keys_line(tmp_path / "state", 'sh -c "id"')


def agent(tmp: Path, request: str | None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if request is not None:
        env["SSH_ORIGINAL_COMMAND"] = request
    argv = [sys.executable, "-m", "bifrost.cli.main", "-c", str(tmp / "b.toml")]
    argv += ["fleet", "agent", "--state-dir", str(tmp / "state")]
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "request_",
    [
        "bash",
        "status; id",
        "apply",
        "apply now",
        "apply 0123456789ab x",
        "health 0",
        "health x",
        "",
    ],
)
def test_agent_refuses_anything_but_its_verbs(tmp_path: Path, request_: str) -> None:
    done = agent(tmp_path, request_)
    assert done.returncode == 2
    assert "refused" in done.stderr and "this key only runs status, plan" in done.stderr
    assert not (tmp_path / "state").exists()


def test_agent_without_ssh_is_refused(tmp_path: Path) -> None:
    done = agent(tmp_path, None)
    assert done.returncode == 2 and "not an interactive command" in done.stderr


def test_agent_rejects_a_bad_pushed_config_naming_it(tmp_path: Path) -> None:
    done = agent(tmp_path, "stage-config", '[xdp]\nmodules = ["quake"]\n')
    assert done.returncode == 3
    assert "xdp.modules[0] = 'quake': unknown game module" in done.stderr
    assert not (tmp_path / "state" / "staged.toml").exists()


def test_agent_refuses_a_game_server_it_cannot_give_its_module(tmp_path: Path) -> None:
    """No dkms on PATH here and no fou_map loaded: a game server's config needs fou_map,
    so plan says why and apply stops before installing anything."""
    staged = agent(tmp_path, "stage-config", GS)
    assert staged.returncode == 0, staged.stderr
    plan = json.loads(agent(tmp_path, "plan", GS).stdout)["kmod"]
    why = f"no dkms on this host to build fou_map {__version__} (it is not loaded)"
    assert (plan["module"], plan["dkms"], plan["rebuild"], plan["why"]) == (
        "fou_map",
        False,
        True,
        why,
    ), plan
    done = agent(tmp_path, f"apply {staged.stdout.split()[-1]}")
    assert done.returncode == 3
    assert f"kernel module rebuild failed, nothing changed: {why}: apt-get install dkms" in (
        done.stderr
    )
    assert not (tmp_path / "b.toml").exists()


def test_agent_stage_apply_rollback(tmp_path: Path) -> None:
    """A config without an XDP program and without a kernel module to run: staged,
    applied only under the id that stage-config printed, kept as previous, rolled back."""
    first, second = "[cache]\n", "[cache]\nrefresh_s = 60\n"
    staged = agent(tmp_path, "stage-config", first)
    assert staged.returncode == 0, staged.stderr
    sha = staged.stdout.split()[-1]
    assert agent(tmp_path, "apply " + "0" * len(sha)).returncode == 3  # not what was staged
    done = agent(tmp_path, f"apply {sha}")
    assert done.returncode == 0 and f"installed config {sha}" in done.stdout, done.stderr
    assert (tmp_path / "b.toml").read_text() == first
    sha2 = agent(tmp_path, "stage-config", second).stdout.split()[-1]
    assert agent(tmp_path, f"apply {sha2}").returncode == 0
    assert (tmp_path / "b.toml").read_text() == second
    back = agent(tmp_path, "rollback")
    assert back.returncode == 0 and f"restored config {sha}" in back.stdout, back.stderr
    assert (tmp_path / "b.toml").read_text() == first
    again = agent(tmp_path, "rollback")
    assert again.returncode == 3 and "nothing to roll back to" in again.stderr
    plan = agent(tmp_path, "plan", second)
    assert plan.returncode == 0 and "+refresh_s = 60" in plan.stdout
    # No dkms on PATH here, and none needed: nothing to rebuild, plan and status say so.
    km = json.loads(plan.stdout)["kmod"]
    assert (km["dkms"], km["needed"], km["rebuild"]) == (False, False, False), km
    st = json.loads(agent(tmp_path, "status").stdout)
    assert "(not used by this config): no dkms on this host" in st["kernel_module"], st
