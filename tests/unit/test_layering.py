"""The pure core stays pure: no I/O modules, no environment; and it imports only the core.

The core is the list below: the modules that compute (flag tables, configuration, rules, the
bootstrap's parts) without touching the system. Everything else (each mode's command, adapters,
orchestrators) may import the core, never the other way round. A module added to the core goes in
CORE; one that starts to need I/O leaves it.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "agent"
CORE = [
    "__init__.py",
    "flags.py",
    "exitcodes.py",
    "logformat.py",
    "iptables/documents.py",
    "iptables/__init__.py",
    "iptables/config.py",
    "iptables/names.py",
    "iptables/record.py",
    "iptables/rules.py",
    "iptables/restore.py",
    "iptables/nft_rules.py",
    "iptables/nft_script.py",
    "sidecar/__init__.py",
    "sidecar/config_parse.py",
    "sidecar/config_env.py",
    "sidecar/config_model.py",
    "sidecar/identity.py",
    "sidecar/bootstrap_parts.py",
    "sidecar/bootstrap_services.py",
    "sidecar/config_bootstrap.py",
    "sidecar/probe_config.py",
    "sidecar/scrape.py",
    "sidecar/drain.py",
    "sidecar/envoy.py",
]
FORBIDDEN = {"subprocess", "socket", "aiohttp", "psutil", "asyncio", "structlog", "prometheus_client"}
CORE_MODULES = {("agent/" + c.removesuffix(".py")).removesuffix("/__init__").replace("/", ".") for c in CORE}


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module the file imports at run time, at the top or inside a function. Imports under
    `if TYPE_CHECKING:` are skipped: they name types for annotations, never run."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "agent" or node.module.startswith("agent."):
                names.update(f"{node.module}.{a.name}" for a in node.names
                             if (ROOT.parent / node.module.replace(".", "/") / f"{a.name}.py").exists())
    return names


def test_core_list_names_real_modules():
    missing = [path for path in CORE if not (ROOT / path).is_file()]
    assert not missing, f"CORE names modules that do not exist: {missing}"


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


@pytest.mark.parametrize("path", CORE)
def test_core_imports_only_the_core(path):
    tree = ast.parse((ROOT / path).read_text())
    outside = sorted(m for m in imported_modules(tree)
                     if (m == "agent" or m.startswith("agent.")) and m not in CORE_MODULES)
    assert not outside, f"core module {path} imports {outside}, which are not in the core"


def test_the_checks_see_a_bad_import():
    """The import walk catches the forms the core could use to reach the edge."""
    tree = ast.parse("from agent import cli\nimport agent.sidecar.status\ndef f():\n    import socket\n"
                     "if TYPE_CHECKING:\n    import agent.sidecar.command\n")
    assert imported_modules(tree) == {"agent", "agent.cli", "agent.sidecar.status", "socket"}
