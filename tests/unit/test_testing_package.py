"""The product (tools/bifrost) never imports the testing package (tools/bifrost_testing).

Fixtures, reference servers, topologies and the lab live in bifrost_testing so
an operator's install runs none of them; a product module that imported one
would make the product depend on test code.
"""

from __future__ import annotations

import ast

import pytest

from bifrost.paths import SOURCE_ROOT

pytestmark = pytest.mark.unit

PRODUCT = SOURCE_ROOT / "tools" / "bifrost"
TESTING = "bifrost_testing"


def references_to_testing(source: str) -> list[str]:
    """Every import of the testing package, and every string naming it (importlib, -m)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == TESTING]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == TESTING:
                found.append(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and TESTING in node.value
            and not _is_docstring_like(node.value)
        ):
            found.append(repr(node.value))
    return found


def _is_docstring_like(text: str) -> bool:
    # Prose may name the package ("tests use bifrost_testing"); a module path may not.
    return " " in text.strip() and "-m " not in text


def test_product_modules_do_not_import_the_testing_package() -> None:
    modules = sorted(PRODUCT.rglob("*.py"))
    assert len(modules) > 20, f"found only {len(modules)} modules under {PRODUCT}"
    offenders = {
        str(p.relative_to(SOURCE_ROOT)): refs
        for p in modules
        if (refs := references_to_testing(p.read_text()))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import bifrost_testing\n",
        "import bifrost_testing.lab as lab\n",
        "from bifrost_testing import refserver\n",
        "from bifrost_testing.fou_map_testbed import build\n",
        "import importlib\nimportlib.import_module('bifrost_testing.lab')\n",
        "argv = ['python', '-m', 'bifrost_testing.refserver']\n",
    ],
)
def test_the_check_catches_each_way_of_importing(source: str) -> None:
    assert references_to_testing(source) != []


def test_the_check_leaves_prose_and_the_product_alone() -> None:
    assert references_to_testing('"""Tests build on bifrost_testing fixtures."""\n') == []
    assert references_to_testing("from bifrost.fou_map import endpoint\n") == []


def test_the_moved_fixtures_live_only_in_the_testing_package() -> None:
    for gone in (
        "bifrost_nf/refserver.py",
        "bifrost_nf/usercache.py",
        "fou_map/testbed.py",
        "xdp/topology.py",
        "lab",
    ):
        assert not (PRODUCT / gone).exists(), gone
