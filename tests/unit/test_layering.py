"""The pure core stays pure: no I/O modules, no environment. Imports only point down (DESIGN.md)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "agent"
CORE = [
    "flags.py",
    "exitcodes.py",
    "record.py",
    "iptables/config.py",
    "iptables/rules.py",
    "iptables/restore.py",
    "sidecar/config_parse.py",
    "sidecar/config_env.py",
    "sidecar/config_model.py",
    "sidecar/identity.py",
    "sidecar/bootstrap_parts.py",
    "sidecar/drain.py",
    "sidecar/envoy.py",
]
FORBIDDEN = {"subprocess", "socket", "aiohttp", "psutil", "asyncio", "structlog", "prometheus_client"}
#: Orchestrators and adapters never import the edge (agent.cli) except for the shared flag table.
EDGE = "agent.cli"


def imported_modules(tree: ast.AST) -> set[str]:
    """Modules imported at run time (imports under `if TYPE_CHECKING:` are only type hints)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORE)
def test_core_module_is_pure(path):
    tree = ast.parse((ROOT / path).read_text())
    bad = {m for m in imported_modules(tree) if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{path} imports {bad}"
    environ = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
        and isinstance(n.value, ast.Name) and n.value.id == "os"
    ]
    assert not environ, f"{path} reads os.environ"


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")))
def test_imports_point_down(path):
    """Core modules never import adapters or orchestrators (modules outside the core list)."""
    if path not in CORE:
        return
    tree = ast.parse((ROOT / path).read_text())
    core_mods = {"agent." + c[:-3].replace("/", ".") for c in CORE} | {"agent", "agent.sidecar.config"}
    for mod in imported_modules(tree):
        if mod.startswith("agent"):
            assert mod in core_mods, f"core module {path} imports non-core {mod}"
