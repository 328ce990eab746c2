"""`bifrost xdp attach|apply|status|stats|detach` on a veth in a netns (pins, re-apply)."""

from __future__ import annotations

from pathlib import Path

import pytest
from xdp_harness import compile_object, x0_link, xdp_toml

from bifrost.cli.main import main
from bifrost.netns import Namespace
from bifrost.xdp import libbpf, maps, maps_def

pytestmark = pytest.mark.bpf


def test_cli_lifecycle(tmp_path_factory: pytest.TempPathFactory, capsys, pin_base: Path) -> None:
    tmp = tmp_path_factory.mktemp("cli")
    obj = compile_object(tmp)
    pins = pin_base
    cfg = tmp / "bifrost.toml"
    cfg.write_text(xdp_toml(pins, mode="auto", ipv6="pass"))
    with x0_link("bfx-cli") as (a, b), a.entered():
        assert main(["-c", str(cfg), "xdp", "attach", "--obj", str(obj)]) == 0
        assert "attached (native)" in capsys.readouterr().out
        assert main(["-c", str(cfg), "xdp", "status"]) == 0
        out = capsys.readouterr().out
        assert "native, prog id" in out and "auth: off (auth off: FOU packets" in out
        assert (pins / "x0" / "rule_slots").exists()
        # A second attach refuses instead of stacking programs.
        assert main(["-c", str(cfg), "xdp", "attach", "--obj", str(obj)]) == 1
        # Re-apply a change without reloading: the settings map follows the file.
        cfg.write_text(xdp_toml(pins, mode="auto", ipv6="drop"))
        assert main(["-c", str(cfg), "xdp", "apply"]) == 0
        with maps.MapSet.from_pins(pins / "x0") as ms:
            (settings,) = maps.in_force(ms, "settings").values()
        assert maps_def.BY_NAME["settings"].unpack(settings)["ipv6_policy"] == maps_def.IPV6_DROP
        assert "generation 1; settings: +1" in capsys.readouterr().out
        # [auth] goes in with the config generation; status says what is in force.
        auth = '[auth]\nkeys = ["0123456789abcdef", "fedcba9876543210"]\n'
        cfg.write_text(auth + xdp_toml(pins, mode="auto", ipv6="drop"))
        assert main(["-c", str(cfg), "xdp", "apply"]) == 0
        assert main(["-c", str(cfg), "xdp", "status"]) == 0
        assert "auth: on, 2 key(s) accepted" in capsys.readouterr().out
        # Traffic through the attached program shows up in stats.
        b.run(["ping", "-c", "1", "-W", "1", "10.8.0.1"], check=False)
        capsys.readouterr()
        assert main(["-c", str(cfg), "xdp", "stats"]) == 0
        out = capsys.readouterr().out
        assert "pass_non_ip" in out or "pass_host" in out, out
        assert main(["-c", str(cfg), "xdp", "detach"]) == 0
        assert not (pins / "x0").exists()
        assert main(["-c", str(cfg), "xdp", "status"]) == 3
        assert libbpf.xdp_query_id(libbpf_ifindex("x0")) == 0


def libbpf_ifindex(name: str) -> int:
    import socket

    return socket.if_nametoindex(name)


def test_auto_mode_falls_back_to_generic_with_a_warning(
    tmp_path_factory: pytest.TempPathFactory, caplog, pin_base: Path
) -> None:
    """A bridge has no native XDP: `auto` attaches generic and says so; detach cleans up."""
    from xdp_harness import make_config

    from bifrost.xdp import loader

    obj = compile_object(tmp_path_factory.mktemp("generic"))
    pins = pin_base
    with Namespace("bfx-gen") as ns:
        ns.run(["ip", "link", "add", "br0", "type", "bridge"])
        ns.run(["ip", "link", "set", "br0", "up"])
        with ns.entered():
            with caplog.at_level("WARNING"):
                res = loader.attach(make_config(), "br0", obj=obj, mode="auto", pin_base=pins)
            assert res.mode == "generic"
            assert "falling back to generic" in caplog.text
            st = loader.status("br0", pins)
            assert st.generic_prog_id and not st.native_prog_id
            # Our program is there already: refused as any attached program is.
            with pytest.raises(loader.AttachError, match="another XDP program is attached"):
                loader.attach_also("br0", "br0", pins, mode="native")
            ns.run(["ip", "link", "add", "br1", "type", "bridge"])
            with pytest.raises(libbpf.BpfError):  # a bridge has no native XDP
                loader.attach_also("br1", "br0", pins, mode="native")
            loader.detach("br0", pins)
            assert not loader.status("br0", pins).attached
            assert not (pins / "br0").exists()
