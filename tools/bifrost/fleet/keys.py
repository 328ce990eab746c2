"""The back-end's SSH key and the authorized_keys line that POPs and game servers trust.

The line pins the key to one forced command, the host-side agent (`bifrost fleet
agent`), with `restrict` (no pty, no forwarding of ports, agent or X11, no
~/.ssh/rc): whatever the back-end asks for arrives in SSH_ORIGINAL_COMMAND and the
agent runs only its fixed verbs. The key is never a shell on the host.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from bifrost.fleet import defaults

log = logging.getLogger(__name__)

KEY_NAME = "id_ed25519"


class KeyGenError(RuntimeError):
    """ssh-keygen is missing or failed."""


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_NAME


def keygen(state_dir: Path, comment: str = "bifrost-fleet") -> Path:
    """Create the ed25519 key (no passphrase: the back-end runs unattended) once."""
    key = key_path(state_dir)
    if key.exists():
        log.info("%s exists: kept", key)
        return key
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
    log.info("$ %s", shlex.join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise KeyGenError("ssh-keygen not found: apt-get install openssh-client") from None
    if done.returncode != 0:
        raise KeyGenError(f"ssh-keygen failed: {done.stderr.strip()}")
    return key


def authorized_keys_line(state_dir: Path, agent_command: str = defaults.AGENT_COMMAND) -> str:
    """`restrict,command="..." ssh-ed25519 AAAA... comment` for the hosts' authorized_keys."""
    pub = key_path(state_dir).with_suffix(".pub")
    try:
        public = pub.read_text().strip()
    except FileNotFoundError:
        raise KeyGenError(f"{pub} does not exist: run `bifrost fleet keygen` first") from None
    if '"' in agent_command or "\n" in agent_command:
        raise ValueError(f"agent command {agent_command!r}: no double quote or newline allowed")
    return f'restrict,command="{agent_command}" {public}'
