"""The test VM: boot a Debian kernel under QEMU with the host root over 9p, run a command."""

from bifrost.vm.runner import GuestFailure, VmResult, run

__all__ = ["GuestFailure", "VmResult", "run"]
