"""The guest kernel command line the VM runner builds, with `invoke vm --append` args."""

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
from invoke import Collection, Program

from bifrost.paths import SOURCE_ROOT
from bifrost.vm import runner

pytestmark = pytest.mark.unit

SCRIPT = Path("/work/x/build/vm/runs/abc.sh")


def test_the_runner_arguments_come_first_and_appended_ones_last():
    line = runner.kernel_cmdline(SCRIPT, ["slub_debug=U,kmalloc-8", "nokaslr"]).split(" ")
    assert line[:6] == [
        "console=ttyS0",
        "panic=-1",
        "oops=panic",
        "loglevel=5",
        "mitigations=off",
        "net.ifnames=0",
    ]
    assert line[6:] == [
        f"bifrost.work={SOURCE_ROOT}",
        f"bifrost.script={SCRIPT}",
        "slub_debug=U,kmalloc-8",
        "nokaslr",
    ]


def test_no_append_leaves_the_runner_arguments_alone():
    assert runner.kernel_cmdline(SCRIPT) == runner.kernel_cmdline(SCRIPT, [])
    assert runner.kernel_cmdline(SCRIPT).endswith(f"bifrost.script={SCRIPT}")


def test_one_append_item_may_hold_several_arguments():
    line = runner.kernel_cmdline(SCRIPT, ["  slub_debug=U,kmalloc-8   nokaslr ", "quiet"])
    assert line.endswith(f"bifrost.script={SCRIPT} slub_debug=U,kmalloc-8 nokaslr quiet")


@pytest.mark.parametrize(
    "arg",
    ["oops=0", "panic=0", "console=tty0", "bifrost.script=/tmp/x", "bifrost.work=/"],
)
def test_an_argument_the_run_depends_on_is_refused_by_name(arg):
    key = arg.split("=")[0]
    with pytest.raises(ValueError, match=rf"kernel argument '{arg}': {key} is set by the runner"):
        runner.kernel_cmdline(SCRIPT, [arg])


def test_an_argument_without_a_name_is_refused():
    with pytest.raises(ValueError, match=r"kernel argument '=1': no name"):
        runner.kernel_cmdline(SCRIPT, ["=1"])


def _invoke_vm(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str]:
    """Run `invoke vm ARGV` through invoke's own parser, with the guest replaced by a
    recorder of what the runner was asked: no guest boots in the unit tier."""
    spec = importlib.util.spec_from_file_location("bifrost_tasks_vm", SOURCE_ROOT / "tasks.py")
    assert spec and spec.loader
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    seen: dict = {}

    def record(kver, script, timeout, append):
        seen.update(kver=kver, script=script, cmdline=runner.kernel_cmdline(SCRIPT, append))
        return runner.VmResult(kver, 0, "", 0.0, [])

    monkeypatch.setattr(tasks.vm, "run", record)
    monkeypatch.setattr(tasks, "_require_kernel", lambda kver, boot: None)
    program = Program(namespace=Collection.from_module(tasks))
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        try:
            program.run(["invoke", "vm", "--kernel", "6.1.0-56-amd64", *argv], exit=True)
        except SystemExit as e:
            out.write(f"exit {e.code}")
    return seen, out.getvalue()


def test_invoke_vm_append_reaches_the_kernel_command_line(monkeypatch):
    seen, out = _invoke_vm(
        ["--append", "slub_debug=U,kmalloc-8", "--append", "nokaslr", "--", "uname", "-r"],
        monkeypatch,
    )
    assert seen["script"] == "uname -r", out
    assert seen["cmdline"].endswith(f"bifrost.script={SCRIPT} slub_debug=U,kmalloc-8 nokaslr")


def test_invoke_vm_without_append_boots_the_runner_arguments_only(monkeypatch):
    seen, out = _invoke_vm(["--", "true"], monkeypatch)
    assert seen["cmdline"] == runner.kernel_cmdline(SCRIPT), out


def test_invoke_vm_refuses_a_runner_argument_with_its_name(monkeypatch):
    _, out = _invoke_vm(["--append", "oops=0", "--", "true"], monkeypatch)
    assert "kernel argument 'oops=0': oops is set by the runner" in out
    assert "exit 1" in out
