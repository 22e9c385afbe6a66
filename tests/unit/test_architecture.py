"""The layers of docs/architecture.md: which package of ours each package may import (lazy imports included).
A package not listed may import nothing of ours but itself and the leaves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import ROOT

# package -> the packages of ours it may import besides itself; "*" is the composition root
RUNTIME = {
    "logs": set(),
    "metrics": set(),
    "draining": set(),
    "faults": set(),
    "model": set(),
    "download": {"logs"},
    "adapters": {"model", "metrics"},
    "engine": {"model", "adapters", "metrics", "faults"},
    "api": {"engine", "model", "adapters", "metrics", "faults", "draining"},
    "serve": {"api", "engine", "model", "adapters", "download", "metrics", "logs", "faults", "draining"},
    "tools": {"model"},
    # the router runs without torch: nothing of the model, the engine or the runtime's metrics (torch)
    "router": {"logs", "draining"},
    "adapter_sync": {"adapters", "logs"},
    "__main__": {"*"},
}
OPERATOR = {
    "timestamps": set(),
    "machinery": {"timestamps"},
    "decisions": {"timestamps"},
    "io": {"decisions", "machinery", "timestamps"},
    "measure": {"decisions", "timestamps"},
    "reconcile": {"io", "decisions", "machinery", "measure", "timestamps"},
    "manager": {"*"},
    "handlers": {"*"},
    "__main__": {"*"},
}
PACKAGES = {
    "moe_runtime": (ROOT / "runtime" / "moe_runtime", RUNTIME),
    "moe_operator": (ROOT / "operator" / "moe_operator", OPERATOR),
}


def imports_of(path: Path, package: str) -> set[str]:
    """Top-level parts (`model`, `engine`, ...) of every import of `package` in one file, and foreign ones."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [
                f"{node.module}.{alias.name}" for alias in node.names if node.module in PACKAGES
            ]
        for name in names:
            top, _, rest = name.partition(".")
            if top in PACKAGES and top != package:
                found.add(f"<{top}>")
            elif top == package and rest:
                found.add(rest.split(".")[0])
    return found


def layer_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_imports_only_the_layers_below_it(package):
    root, rules = PACKAGES[package]
    broken = []
    for path in sorted(root.rglob("*.py")):
        layer = layer_of(path, root)
        if layer == "__init__":
            continue
        assert layer in rules, f"{path.relative_to(ROOT)}: a package docs/architecture.md does not place"
        allowed = rules[layer] | {layer}
        for imported in sorted(imports_of(path, package)):
            if imported.startswith("<") or ("*" not in allowed and imported not in allowed):
                broken.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert broken == []


def test_the_rules_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "model" / "decoder.py"
    bad.parent.mkdir()
    bad.write_text("from moe_runtime.engine.scheduler import Scheduler\nimport moe_operator.decisions.spec\n")
    assert imports_of(bad, "moe_runtime") == {"engine", "<moe_operator>"}
