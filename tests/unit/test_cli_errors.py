"""Operator mistakes on the `bifrost` command line end in one clear line, never a side effect."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bifrost import netns
from bifrost.cli.main import main

pytestmark = pytest.mark.unit

MAP_ACTIONS = (
    ["map", "show"],
    ["map", "add", "203.0.113.5", "192.0.2.1"],
    ["map", "del", "203.0.113.5"],
    ["map", "flush"],
    ["map", "stats"],
    ["endpoint", "up", "--local", "10.0.0.1", "--gateway", "10.0.0.2"],
    ["endpoint", "down", "--local", "10.0.0.1", "--gateway", "10.0.0.2"],
)


@pytest.mark.parametrize("argv", MAP_ACTIONS, ids=lambda a: " ".join(a[:2]))
def test_missing_netns_is_an_error_and_not_created(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """pyroute2 would create the namespace; every --netns must refuse one that is not there."""
    name = f"bifrost-absent-{os.getpid()}"
    assert not (netns.NETNS_DIR / name).exists()
    assert main([*argv, "--netns", name]) == 1
    err = capsys.readouterr().err
    assert f"bifrost: network namespace {name!r} does not exist" in err
    assert not (netns.NETNS_DIR / name).exists(), "the namespace was created"


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_netns_names_that_are_paths_are_refused(name: str) -> None:
    with pytest.raises(netns.NoSuchNetns, match="does not exist"):
        netns.require(name)


@pytest.mark.parametrize("argv", [["map", "show"], ["cache", "stats"]])
def test_named_config_that_does_not_exist_is_an_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.toml"
    assert main(["-c", str(missing), *argv]) == 1
    assert f"bifrost: {missing}: config file does not exist" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize(
    ("client", "pop", "message"),
    [
        ("224.0.0.5", "192.0.2.1", "client 224.0.0.5: fou_map refuses it: a multicast address"),
        ("203.0.113.5", "127.0.0.1", "pop 127.0.0.1: fou_map refuses it: a loopback address"),
        ("0.0.0.0", "192.0.2.1", "client 0.0.0.0: fou_map refuses it"),
        ("203.0.113.5", "255.255.255.255", "pop 255.255.255.255: fou_map refuses it"),
    ],
)
def test_map_add_refuses_what_the_kernel_refuses(
    client: str, pop: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["map", "add", client, pop]) == 1
    assert f"bifrost: {message}" in capsys.readouterr().err


def _slow_child() -> bytes:
    time.sleep(3)
    return b"done"


def test_namespace_helper_may_answer_slower_than_pyroute2s_default() -> None:
    """CI's 6.12 guest timed out creating a namespace after pyroute2's 2 s default.

    Namespace creation waits for the kernel's pending namespace cleanups, so the
    forked helper gets bifrost.netns.CHILD_TIMEOUT_S; a 3 s answer must arrive.
    """
    from pyroute2.process import ChildProcess

    assert netns.CHILD_TIMEOUT_S >= 30
    with ChildProcess(target=_slow_child, args=[]) as proc:
        payload, _fds = proc.communicate()
    assert payload == b"done"
