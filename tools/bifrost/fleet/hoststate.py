"""What a fleet host runs and what it ran before: the files the agent keeps, and the XDP
program it drives through the `bifrost xdp` CLI (never around it).

State directory (one per host)::

    staged.toml           the config the back-end pushed, not yet applied
    current/              module_config.h, bifrost_xdp.o, build.json of the running config
    previous/             bifrost.toml + the same three, for rollback; kmod.json when
                          the apply rebuilt the kernel module (the version it replaced)
    lock                  flock: one stage/apply/rollback at a time

The config itself lives where the host's daemons read it (``-c``, default
/etc/bifrost/bifrost.toml). An apply rebuilds the XDP object when the header or
the release changed, and the role's kernel module through DKMS when DKMS has not
installed this release's build for the running kernel, then reloads it
(bifrost.fleet.kmod; the daemons around the reload: bifrost.fleet.holders).
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bifrost import __version__, codegen
from bifrost import config as hostconfig
from bifrost.fleet import holders, kmod
from bifrost.xdp import build

log = logging.getLogger(__name__)

OBJECT_NAME = "bifrost_xdp.o"
HEADER_NAME = "module_config.h"
KMOD_RECORD = "kmod.json"
# The kernel module each role runs (DKMS-built).
KMODS = {"pop": "bifrost_nf", "gameserver": "fou_map"}
# The daemons each role runs (their systemd units); reported by status, checked by health.
UNITS = {
    "pop": ("bifrost-xdp.service", "bifrost-cached.service"),
    "gameserver": ("bifrost-foumapd.service",),
}


def uses_kmod(cfg: hostconfig.Config) -> bool:
    """Whether the config runs its role's kernel module: a POP's bifrost_nf answers the
    A2S queries its cached rules pass up ([cache] fills it); a game server's fou_map is
    its [fou_map]."""
    if cfg.xdp is not None:
        return cfg.cache is not None or any(r.cache for r in cfg.xdp.rules)
    return cfg.fou_map is not None


class AgentError(RuntimeError):
    """A verb failed; the message says what and what state the host is left in."""


@dataclass(frozen=True)
class Desired:
    """A config as the host would run it: its text, role and generated header."""

    text: str
    cfg: hostconfig.Config
    header: str | None  # module_config.h; None for a game server (no XDP program)

    @property
    def role(self) -> str:
        return "pop" if self.cfg.xdp is not None else "gameserver"

    @property
    def modules(self) -> list[str]:
        return list(self.cfg.xdp.modules) if self.cfg.xdp else []


def short_sha(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]


def _diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name
        )
    )


class HostState:
    def __init__(self, config: Path, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.current = state_dir / "current"
        self.previous = state_dir / "previous"
        self.staged = state_dir / "staged.toml"

    # -- reading ---------------------------------------------------------------------

    def desired(self, text: str, where: str) -> Desired:
        """Validate a config text as the host's own loader would; errors name key and value."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise hostconfig.ConfigError(f"{where}: not valid TOML: {e}") from None
        cfg = hostconfig.parse(data, self.config)
        header = None
        if cfg.xdp is not None:
            header = codegen.render_module_config(list(cfg.xdp.modules), source=str(self.config))
        return Desired(text, cfg, header)

    def running_text(self) -> str:
        return self.config.read_text() if self.config.exists() else ""

    def running_header(self) -> str:
        h = self.current / HEADER_NAME
        return h.read_text() if h.exists() else ""

    def build_info(self, d: Path | None = None) -> dict[str, object]:
        f = (d or self.current) / "build.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def needs_build(self, want: Desired) -> bool:
        """A new object when the header or the bifrost release (the program source) changes."""
        if want.header is None:
            return False
        info = self.build_info()
        return (
            want.header != self.running_header()
            or info.get("version") != __version__
            or not (self.current / OBJECT_NAME).exists()
        )

    def plan(self, want: Desired) -> dict[str, object]:
        return {
            "kmod": self.kernel_module(want.role, want.cfg).as_json(),
            "config_diff": _diff(self.running_text(), want.text, "running", "pushed"),
            "module_config_diff": _diff(
                self.running_header(), want.header or "", f"running/{HEADER_NAME}", HEADER_NAME
            ),
            "rebuild": self.needs_build(want),
        }

    # -- changing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / "lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AgentError("another stage/apply/rollback is running on this host") from None
            yield

    def stage(self, text: str) -> Desired:
        want = self.desired(text, "pushed config")
        with self.locked():
            tmp = self.staged.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.staged)
        return want

    def _build(self, want: Desired, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        assert want.header is not None
        (out / HEADER_NAME).write_text(want.header)
        try:
            build.compile_program(out / HEADER_NAME, out_dir=out)
        except build.BuildError as e:
            shutil.rmtree(out, ignore_errors=True)
            raise AgentError(f"build failed, nothing changed: {e}") from None
        info = {
            "version": __version__,
            "modules": want.modules,
            "header_sha": short_sha(want.header),
        }
        (out / "build.json").write_text(json.dumps(info))

    def _install_config(self, text: str) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.config.with_name(self.config.name + ".fleet-tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def apply(self, sha: str) -> list[str]:
        """Run the staged config: build if needed, keep the running one as previous, install,
        drive the program; on a failure past the build, put the previous back and say so.

        sha (short_sha of the staged text) binds the apply to what its caller staged: a
        config staged since by someone else, or left from an apply that stopped, is not run.
        """
        with self.locked():
            if not self.staged.exists():
                raise AgentError("nothing staged: push a config with stage-config first")
            staged = self.staged.read_text()
            if short_sha(staged) != sha:
                raise AgentError(
                    f"the staged config is {short_sha(staged)}, not {sha}: stage it again"
                )
            want = self.desired(staged, str(self.staged))
            old_text = self.running_text()
            old = self.desired(old_text, str(self.config)) if old_text else None
            done: list[str] = []
            rebuild = self.needs_build(want)
            nxt = self.state_dir / "next"
            if rebuild:
                self._build(want, nxt)
                done.append(f"built {OBJECT_NAME} with modules {want.modules or 'none'}")
            module = self.kernel_module(want.role, want.cfg)
            if module.rebuild:
                try:
                    done += kmod.rebuild(module)
                    done += self._activate(module)
                except kmod.KmodError as e:
                    shutil.rmtree(nxt, ignore_errors=True)
                    raise AgentError(
                        f"kernel module rebuild failed, nothing changed: {e}"
                    ) from None
            # Keep what runs now, then switch files.
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous.mkdir(parents=True)
            if module.rebuild:
                (self.previous / KMOD_RECORD).write_text(json.dumps(module.as_json()))
            if old_text:
                (self.previous / "bifrost.toml").write_text(old_text)
            if self.current.exists():
                shutil.copytree(self.current, self.previous, dirs_exist_ok=True)
            if rebuild:
                shutil.rmtree(self.current, ignore_errors=True)
                os.replace(nxt, self.current)
            self._install_config(want.text)
            self.staged.unlink()
            done.append(f"installed config {short_sha(want.text)}")
            try:
                done += self._drive(want, old, rebuilt=rebuild)
            except AgentError as e:
                replaced = self._replaced_kmod()
                self._restore()
                try:
                    if old is not None:
                        self._drive(old, want, rebuilt=rebuild)
                    elif self.xdp("status").returncode == 0:
                        self._detach(want)
                    self._kmod_back(replaced)
                except AgentError as e2:
                    raise AgentError(f"{e}; rolling back failed too: {e2}") from None
                raise AgentError(f"{e}; rolled back to the previous config") from None
            return done

    def rollback(self) -> list[str]:
        """Back to the config (and object) that ran before the last apply, and to DKMS's
        install of the module version that apply replaced."""
        with self.locked():
            prev_cfg = self.previous / "bifrost.toml"
            if not prev_cfg.exists():
                raise AgentError("nothing to roll back to: no previous config on this host")
            now = self.desired(self.running_text(), str(self.config))
            prev = self.desired(prev_cfg.read_text(), str(prev_cfg))
            rebuilt = self.build_info(self.previous) != self.build_info()
            replaced = self._replaced_kmod()
            self._restore()
            lines = [f"restored config {short_sha(prev.text)}", *self._drive(prev, now, rebuilt)]
            try:
                return lines + self._kmod_back(replaced)
            except AgentError as e:
                raise AgentError(f"{'; '.join(lines)}; but the module was not: {e}") from None

    def _replaced_kmod(self) -> dict[str, object]:
        """What the last apply's kernel module rebuild replaced ({} if it rebuilt none)."""
        f = self.previous / KMOD_RECORD
        return dict(json.loads(f.read_text())) if f.exists() else {}

    def _kmod_back(self, replaced: dict[str, object]) -> list[str]:
        """After a rollback: DKMS's install of the version the apply replaced, if any,
        loaded again in place of the apply's."""
        if not replaced:
            return []
        module, kernel, old = replaced["module"], replaced["kernel"], replaced["installed"]
        if old is None or old == replaced["version"]:
            why = "none was installed" if old is None else "its source was replaced"
            lines = [f"dkms: {module} {replaced['version']} stays installed ({why} before)"]
            if replaced["loaded"] is None and kmod.loaded_version(str(module)) is not None:
                try:  # it was not loaded before the apply
                    lines += self.reload_module(str(module), None)
                except kmod.KmodError as e:
                    raise AgentError(str(e)) from None
            return lines
        try:
            lines = [kmod.reinstall(str(module), str(old), str(kernel))]
            want = str(old) if replaced["loaded"] is not None else None
            return lines + self.reload_module(str(module), want)
        except kmod.KmodError as e:
            raise AgentError(str(e)) from None

    def _activate(self, st: kmod.KmodState) -> list[str]:
        """Load the build the rebuild installed in place of the running module, and check
        the kernel runs the release's version; if not, DKMS's previous install is put
        back and loaded again, and KmodError says what runs now."""
        try:
            return self.reload_module(st.module, st.version)
        except kmod.KmodError as e:
            try:
                back = self._kmod_back(st.as_json())
            except AgentError as e2:
                raise kmod.KmodError(
                    f"{e}; putting the previous module back failed: {e2}"
                ) from None
            raise kmod.KmodError(f"{e}; {'; '.join(back) or 'nothing to put back'}") from None

    def reload_module(self, module: str, want: str | None) -> list[str]:
        """The agent's reload step: module unloaded and loaded again (version want; None:
        left unloaded) with the running config's daemons sequenced around it."""
        text = self.running_text()
        cfg = self.desired(text, str(self.config)).cfg if text else None
        return kmod.reload(module, want, holders.for_module(module, cfg))

    def _restore(self) -> None:
        prev_cfg = self.previous / "bifrost.toml"
        if prev_cfg.exists():
            self._install_config(prev_cfg.read_text())
        else:
            self.config.unlink(missing_ok=True)
        shutil.rmtree(self.current, ignore_errors=True)
        shutil.copytree(self.previous, self.current)
        (self.current / "bifrost.toml").unlink(missing_ok=True)
        (self.current / KMOD_RECORD).unlink(missing_ok=True)
        shutil.rmtree(self.previous)

    # -- the XDP program, through its CLI ------------------------------------------------

    def xdp(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "bifrost.cli.main", "-c", str(config or self.config)]
        argv += ["xdp", *args]
        log.info("$ %s", shlex.join(argv))
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)

    def _xdp_ok(self, *args: str, config: Path | None = None) -> str:
        done = self.xdp(*args, config=config)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip()
            raise AgentError(f"`bifrost xdp {' '.join(args)}` failed ({done.returncode}): {why}")
        return f"xdp {args[0]}: {done.stdout.strip()}"

    def _drive(self, want: Desired, old: Desired | None, rebuilt: bool) -> list[str]:
        """Make the program match the installed config and object."""
        if want.cfg.xdp is None:
            if old is not None and old.cfg.xdp is not None:
                return [self._detach(old)]
            return []
        obj = str(self.current / OBJECT_NAME)
        if old is not None and old.cfg.xdp and old.cfg.xdp.interface != want.cfg.xdp.interface:
            return [self._detach(old), self._xdp_ok("attach", "--obj", obj)]
        st = self.xdp("status")
        if st.returncode == 3:
            return [self._xdp_ok("attach", "--obj", obj)]
        if st.returncode != 0:
            raise AgentError(f"`bifrost xdp status` failed: {st.stderr.strip()}")
        if not rebuilt:
            return [self._xdp_ok("apply")]  # one generation switch
        # The new object replaces the attached one in one step, keeping the maps.
        return [self._xdp_ok("upgrade", "--obj", obj)]

    def _detach(self, old: Desired) -> str:
        with _config_file(old.text, self.state_dir) as path:
            return self._xdp_ok("detach", config=path)

    # -- observing ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Game traffic (packets counted against a forward rule) the program served
        (passed up or transmitted) and dropped, from `bifrost xdp stats`. Host traffic
        (rule "-": ARP, SSH, ...) is left out: it moves even when no player gets through."""
        done = self.xdp("stats")
        if done.returncode != 0:
            return {}
        served = dropped = 0
        for line in done.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 4 or not parts[-2].isdigit() or parts[0] == "-":
                continue
            if parts[-3].startswith("drop_"):
                dropped += int(parts[-2])
            else:
                served += int(parts[-2])
        return {"served": served, "dropped": dropped}

    def kernel_module(self, role: str, cfg: hostconfig.Config | None = None) -> kmod.KmodState:
        """The role's kernel module: DKMS's build for the running kernel, the loaded one,
        and whether the config (when given) uses it."""
        needed = cfg is None or uses_kmod(cfg)
        return kmod.state(KMODS[role], needed=needed)

    def units(self, role: str) -> dict[str, str]:
        if not Path("/run/systemd/system").is_dir():
            return {u: "no systemd" for u in UNITS[role]}
        out = {}
        for unit in UNITS[role]:
            done = subprocess.run(
                ["systemctl", "is-active", unit], capture_output=True, text=True, check=False
            )
            state = done.stdout.strip() or "unknown"
            if state != "active":
                enabled = subprocess.run(
                    ["systemctl", "is-enabled", unit], capture_output=True, text=True, check=False
                ).stdout.strip()
                state = f"{state} ({enabled or 'not installed'})"
            out[unit] = state
        return out


@contextlib.contextmanager
def _config_file(text: str, state_dir: Path) -> Iterator[Path]:
    path = state_dir / "detach.toml"
    path.write_text(text)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
