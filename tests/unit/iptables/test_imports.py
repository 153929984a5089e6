"""Start-up cost and layering: the istio-iptables path imports only the standard library, and the
core modules (config, rules, restore) do no I/O."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent

HEAVY = {"aiohttp", "structlog", "prometheus_client", "yaml", "psutil", "grpc", "envoy"}
PKG = Path(agent.__file__).parent

PROBE = r"""
import json, sys
before = set(sys.modules)
from agent.cli import main
from agent.iptables import command, host
command.run.__kwdefaults__["gather"] = lambda **kw: host.HostFacts()  # any host: facts are not the point
rc = main(["istio-iptables", *sys.argv[1:]])
top = {m.split(".")[0] for m in set(sys.modules) - before}
print(json.dumps({"rc": rc, "modules": sorted(top - set(sys.stdlib_module_names) - {"agent", "__main__"})}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["-n", "-b", "*", "-i", "*", "--redirect-dns", "--capture-all-dns"],
                                  ["-n", "-p", "0"]])
def test_iptables_path_imports_only_the_standard_library(argv):
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60,
                       cwd=PKG.parent)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["modules"] == [], result
    assert not HEAVY & set(result["modules"])


def test_python_m_agent_dry_run_imports_nothing_heavy():
    code = ("import runpy, sys; sys.argv = ['agent', 'istio-iptables', '--help'];\n"
            "try:\n    runpy.run_module('agent', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(repr(sorted({m.split('.')[0] for m in sys.modules} & %r)))" % HEAVY)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PKG.parent)
    assert r.stderr.strip().endswith("[]"), r.stderr


CORE = ["config.py", "rules.py", "restore.py", "documents.py", "record.py"]
FORBIDDEN_IMPORTS = {"subprocess", "socket", "aiohttp", "psutil", "os", "pwd", "grp", "structlog"}


@pytest.mark.parametrize("name", CORE)
def test_core_modules_are_pure(name):
    tree = ast.parse((PKG / "iptables" / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            pytest.fail(f"{name} reads the environment")
    assert not imported & FORBIDDEN_IMPORTS
