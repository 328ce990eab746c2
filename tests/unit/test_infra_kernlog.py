"""The kernel-trouble patterns shared by the guest console check and the dmesg checks."""

import pytest

from bifrost.vm.kernlog import kernel_trouble

pytestmark = pytest.mark.unit


def test_kernel_warn_oops_and_bug_lines_are_trouble():
    text = "\n".join(
        [
            "[    1.000000] fou_map: loaded",
            "[   12.345678] WARNING: CPU: 1 PID: 42 at net/core/dev.c:1 foo+0x1/0x2",
            "[   13.000001] BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "[   13.000002] Oops: 0002 [#1] PREEMPT SMP NOPTI",
            "[   14.000000] module verification failed: signature and/or required key missing",
        ]
    )
    assert [line.split("] ", 1)[1][:8] for line in kernel_trouble(text)] == [
        "WARNING:",
        "BUG: ker",
        "Oops: 00",
    ]


def test_user_output_naming_the_words_is_not_trouble():
    text = "tests/kernel/test_x.py::test_no_oops_or_WARNING: PASSED\nBUG: in my test name"
    assert kernel_trouble(text) == []
