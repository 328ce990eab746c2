"""GENERATED: what every Bifrost device's codec shares, from tools/bifrost/abi/defs/common.py
by ``invoke generate``: do not edit.

Every record is a fixed-size little-endian struct that starts with the header
(magic, version, type, length, flags). The records here (INFO) are unbound: each
device's codec (bifrost.abi.bifrost_nf, bifrost.abi.fou_map) subclasses them and
binds its magic and ABI version to its subclasses. Each class names its definition
(spec=); runtime.Record derives its layout from it.
"""

from __future__ import annotations

import ipaddress

from bifrost.abi.defs import common as defs
from bifrost.abi.runtime import Record

# Default of IPv4 fields: one immutable instance shared by every record.
ANY_IPV4 = ipaddress.IPv4Address("0.0.0.0")


class InfoReq(Record, spec=defs.INFO_REQUEST):
    """Ask for INFO; the reply is read() back."""


class InfoReply(Record, spec=defs.INFO_REPLY):
    """ABI and module version, the opener's netns and every counter of that netns."""

    abi_version: int = 0
    n_counters: int = 0
    netns_inum: int = 0
    reserved: int = 0
    module_version: bytes = b""
    counters: tuple[int, ...] = ()
