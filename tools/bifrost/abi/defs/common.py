"""Records every Bifrost device answers the same way."""

from __future__ import annotations

from bifrost.abi.spec import Field, Record

# Room for counters in INFO/STATS replies; a device uses the first n_counters.
MAX_COUNTERS = 64
VERSION_LEN = 32

INFO_REQUEST = Record("info_req", 1, "Ask for INFO; the reply is read() back.")
INFO_REPLY = Record(
    "info_reply",
    2,
    "ABI and module version, the opener's netns and every counter of that netns.",
    (
        Field("abi_version", "u32"),
        Field("n_counters", "u32", doc="how many entries of counters[] are used"),
        Field("netns_inum", "u32", doc="inode number of the netns the file is bound to"),
        Field("reserved", "u32"),
        Field("module_version", "u8", VERSION_LEN, doc="NUL-terminated"),
        Field("counters", "u64", MAX_COUNTERS, doc="indexed by the counter enum"),
    ),
)
# Rendered once (bifrost/abi/common.py); each device's codec subclasses them.
RECORDS = (INFO_REQUEST, INFO_REPLY)
