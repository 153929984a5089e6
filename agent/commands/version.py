"""`pilot-agent version`: Istio's long form, `--short`, or `--output json|yaml`."""
from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence

from agent import __version__, flags
from agent.exitcodes import Exit
from agent.flags import LOG_FLAGS, Flag

FLAGS = (
    Flag("short", kind="bool", short="s", default=False, help="print only the version number"),
    Flag("output", short="o", default="", help="one of 'yaml' or 'json'"),
    *LOG_FLAGS,
)


def build_info() -> dict[str, str]:
    return {"version": __version__, "revision": "unknown", "python_version": platform.python_version(),
            "status": "Clean", "tag": __version__}


def render(short: bool, output: str) -> str:
    info = build_info()
    if output == "json":
        return json.dumps({"clientVersion": info}, indent=2) + "\n"
    if output == "yaml":
        return "clientVersion:\n" + "".join(f"  {k}: {v}\n" for k, v in sorted(info.items()))
    if short:
        return f"client version: {info['version']}\n"
    return ('client version: version.BuildInfo{Version:"%(version)s", GitRevision:"%(revision)s", '
            'PythonVersion:"%(python_version)s", BuildStatus:"%(status)s", GitTag:"%(tag)s"}\n' % info)


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parsed = flags.parse_command("pilot-agent version [flags]", FLAGS, argv, environ)
    if isinstance(parsed, int):
        return parsed
    output = parsed.values["output"]
    if output not in ("", "yaml", "json"):
        sys.stderr.write("Error: --output must be 'yaml' or 'json'\n")
        return Exit.USAGE
    sys.stdout.write(render(parsed.values["short"], output))
    return Exit.OK
