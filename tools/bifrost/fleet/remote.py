"""One SSH connection per host (Fabric over Paramiko), with the inventory's host key only.

The host key comes from the inventory and nowhere else: no ~/.ssh/known_hosts,
no ~/.ssh/config, and an unknown or different key is refused (Paramiko's
RejectPolicy; OpenSSH's StrictHostKeyChecking=yes), never learned on first use.
Every failure becomes a HostError whose message names the host and what to do.
"""

from __future__ import annotations

import io
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import fabric
import invoke
import paramiko

from bifrost.fleet.inventory import Host


class HostError(RuntimeError):
    """A host could not be reached, was not who the inventory says, or a verb failed."""

    def __init__(self, host: Host, message: str) -> None:
        super().__init__(f"{host.name}: {message}")
        self.host = host


def _known_name(host: Host) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


@dataclass
class Result:
    exit: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.stdout)
        return data


class Remote:
    """The agent on one host, through the back-end's key."""

    def __init__(self, host: Host, key: Path, timeout: float) -> None:
        self.host = host
        if not key.exists():
            raise HostError(host, f"no key {key}: run `bifrost fleet keygen` first")
        self.conn = fabric.Connection(
            host.address,
            user=host.user,
            port=host.port,
            connect_timeout=int(max(1, timeout)),
            connect_kwargs={
                "key_filename": str(key),
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": timeout,
                "auth_timeout": timeout,
            },
            config=fabric.Config(overrides={"load_ssh_configs": False}),
        )
        client = paramiko.SSHClient()
        client.get_host_keys().add(_known_name(host), host.host_key.get_name(), host.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.conn.client = client

    def open(self) -> None:
        h = self.host
        where = f"{h.address}:{h.port}"
        try:
            self.conn.open()
        except paramiko.BadHostKeyException as e:
            raise HostError(
                h,
                f"WRONG HOST KEY at {where}: it offered {e.key.get_name()} "
                f"{e.key.fingerprint}, the inventory has {e.expected_key.fingerprint}; "
                "refusing to connect (a different machine, or a reinstalled one: check, then "
                "update host_key in the inventory)",
            ) from None
        except paramiko.AuthenticationException as e:
            raise HostError(
                h,
                f"{where} refused the back-end's key ({e}): is the authorized_keys line "
                "from `bifrost fleet keygen` installed for user " + h.user + "?",
            ) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise HostError(
                    h, f"host key of {where} is not the inventory's ({e}); refusing to connect"
                ) from None
            raise HostError(h, f"unreachable: SSH to {where} failed: {e}") from None
        except (OSError, EOFError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or "timed out"
            if isinstance(e, socket.timeout):
                why = "timed out"
            raise HostError(h, f"unreachable: {where}: {why}") from None

    def call(self, request: str, stdin: str | None = None) -> Result:
        """Run one agent verb; its exit status and output, whatever they are."""
        self.open()
        try:
            res = self.conn.run(
                request,
                hide=True,
                warn=True,
                in_stream=io.StringIO(stdin) if stdin is not None else False,
                pty=False,
            )
        except (invoke.exceptions.UnexpectedExit, paramiko.SSHException, OSError) as e:
            raise HostError(self.host, f"{request}: connection failed: {e}") from None
        return Result(res.exited, res.stdout, res.stderr)

    def must(self, request: str, stdin: str | None = None) -> Result:
        """Run a verb that has to succeed; its error output is the HostError's message."""
        res = self.call(request, stdin)
        if res.exit != 0:
            why = res.stderr.strip() or res.stdout.strip() or f"exit status {res.exit}"
            raise HostError(self.host, why)
        return res

    def close(self) -> None:
        self.conn.close()
