"""The kernel-trouble patterns shared by the guest console check and the dmesg checks."""

import pytest

from bifrost.vm import kernlog
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


def test_trouble_context_names_the_running_test_and_keeps_the_trace() -> None:
    text = "\n".join(
        [
            "tests/kernel/test_a.py::test_one PASSED",
            "tests/kernel/test_a.py::test_two ",
            *(f"[   1.{i:06d}] noise {i}" for i in range(10)),
            "[ 526.997156] Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI",
            "[ 527.000001] RIP: 0010:fm_learn+0x1a/0x90 [fou_map]",
        ]
    )
    context = kernlog.trouble_context(text)
    assert context[0] == "tests/kernel/test_a.py::test_two "
    assert context[-2:] == text.splitlines()[-2:]
    assert kernlog.trouble_context("tests/x.py::t PASSED\n[ 1.0] fine") == []
