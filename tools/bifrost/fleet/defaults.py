"""Where the back-end and the agent keep things by default, and the health window."""

from __future__ import annotations

from pathlib import Path

INVENTORY = Path("/etc/bifrost/fleet.toml")
BACKEND_STATE = Path("/var/lib/bifrost/fleet")  # the back-end's key
AGENT_STATE = Path("/var/lib/bifrost/fleet-agent")  # a host's staged/current/previous
AGENT_COMMAND = "bifrost fleet agent"  # the forced command in the hosts' authorized_keys
HEALTH_WINDOW_S = 5.0  # how long a POP has to serve game traffic after a change
