"""/dev/fou_map: the game-server FOU driver's control records."""

from __future__ import annotations

from bifrost.abi.defs import common
from bifrost.abi.spec import Device

DEVICE = Device(
    name="fou_map",
    prefix="fm",
    magic=0x464F554D,  # "FOUM"
    abi_version=1,
    doc="""
Control device of the fou_map module. Each open() is bound to the opener's
network namespace. write() takes exactly one record; a malformed one fails with
EINVAL (bad magic, type or length), EPROTO (other ABI version), E2BIG (longer
than any record) and changes nothing. Replies are read() back in order.
""",
    records=(common.INFO_REQUEST, common.INFO_REPLY),
    counters=("bad_writes",),
)
