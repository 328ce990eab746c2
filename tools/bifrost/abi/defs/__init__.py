"""ABI definitions, one module per device; ``DEVICES`` lists them for codegen."""

from __future__ import annotations

from bifrost.abi.defs import bifrost_nf, fou_map
from bifrost.abi.spec import Device

DEVICES: tuple[Device, ...] = (bifrost_nf.DEVICE, fou_map.DEVICE)
