"""sd_notify(3) for the daemons run as systemd Type=notify units, without libsystemd.

The protocol is one datagram of "KEY=VALUE" lines to the AF_UNIX socket named
by $NOTIFY_SOCKET ("@" prefix: the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(state: str) -> bool:
    """Tell systemd about our state (READY=1, RELOADING=1, STOPPING=1...).

    False when not run by systemd, or when its socket is gone: nothing to tell
    then, and no reason for a daemon to die for it.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify %s: %s", state, e)
        return False
    return True
