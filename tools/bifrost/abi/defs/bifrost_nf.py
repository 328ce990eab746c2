"""/dev/bifrost_nf: the POP's A2S cache module's control records."""

from __future__ import annotations

from bifrost.abi.defs import common
from bifrost.abi.spec import Device

DEVICE = Device(
    name="bifrost_nf",
    prefix="bfnf",
    magic=0x42464E46,  # "BFNF"
    abi_version=1,
    doc="""
Control device of the bifrost_nf module. Each open() is bound to the opener's
network namespace. write() takes exactly one record; a malformed one fails with
EINVAL (bad magic, type or length), EPROTO (other ABI version), E2BIG (longer
than any record) and changes nothing. Replies are read() back in order.
""",
    records=(common.INFO_REQUEST, common.INFO_REPLY),
    counters=("bad_writes",),
)
