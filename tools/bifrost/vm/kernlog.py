"""Kernel log trouble: one list of patterns fails a guest run (console) and a test (dmesg)."""

from __future__ import annotations

import re
import subprocess

# Only kernel lines ("[    1.234567] ...") count, so test output that merely
# mentions these words cannot fail a run.
TROUBLE = re.compile(
    r"^\[\s*\d+\.\d+\] .*("
    r"Oops|BUG: |WARNING: |Kernel panic|general protection fault|UBSAN:|KASAN:|"
    r"kernel BUG at|RCU stall|refcount_t:|list_(add|del) corruption)"
)


def dmesg() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout


def kernel_trouble(text: str) -> list[str]:
    """The lines of a console or dmesg text that show an oops, BUG or warning."""
    return [line for line in text.splitlines() if TROUBLE.search(line)]


def trouble_context(text: str, after: int = 40) -> list[str]:
    """The first trouble line and what follows it (RIP, call trace): enough to find the bug
    from a CI summary alone, where the whole console is not kept."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if TROUBLE.search(line):
            # The test that was running is the last pytest line before the oops.
            window = lines[max(0, i - 5) : i + after]
            running = [x for x in lines[:i] if "::" in x and not x.startswith("[")][-1:]
            return [x for x in running if x not in window] + window
    return []
