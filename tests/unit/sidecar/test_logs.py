"""Istio's line format (text and JSON) and per-scope levels, through the sidecar's structlog chain
and through istio-iptables' standard-library writer: both render with agent.logformat."""
import io
import json
import re

import pytest

from agent import logformat
from agent.iptables.logger import Logger
from agent.logformat import Level
from agent.sidecar import logs


def test_text_line_format(capture):
    buf = capture()
    logs.get().info("Envoy proxy is ready", pid=7, reason="two words")
    line = buf.getvalue().rstrip("\n")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\tinfo\tEnvoy proxy is ready pid=7 reason=\"two words\"", line)


def test_scope_printed_unless_default_and_warn_level_name(capture):
    buf = capture("default:info,probes:debug")
    logs.get("probes").debug("app probe", status=200)
    logs.get().warning("careful")
    first, second = buf.getvalue().splitlines()
    assert first.split("\t")[1:] == ["debug", "probes", "app probe status=200"]
    assert second.split("\t")[1:] == ["warn", "careful"]


def test_levels_filter_per_scope(capture):
    buf = capture("default:warn,probes:none")
    logs.get().info("hidden")
    logs.get("probes").error("hidden too")
    logs.get("other").warning("shown")
    assert [line.split("\t")[-1] for line in buf.getvalue().splitlines()] == ["shown"]


def test_json_output(capture):
    buf = capture(as_json=True)
    logs.get().error("Envoy exited", code=1)
    rec = json.loads(buf.getvalue())
    assert rec["level"] == "error" and rec["msg"] == "Envoy exited" and rec["code"] == 1
    assert rec["scope"] == "default" and rec["time"].endswith("Z")


def test_field_quoting_bound_context_and_aliases(capture):
    buf = capture("default:info,probes:debug")
    logs.get().info("fields", a=1, b="two words", c="", d={"k": [1, 2]}, e="x=y")
    logs.get("probes").bind(container="app").error("bound", kind="readyz")
    logs.get().warn("warn alias")
    logs.get().critical("critical")
    assert [line.split("\t", 1)[1] for line in buf.getvalue().splitlines()] == [
        'info\tfields a=1 b="two words" c="" d={"k":[1,2]} e="x=y"',
        "error\tprobes\tbound container=app kind=readyz",
        "warn\twarn alias",
        "fatal\tcritical",
    ]


def test_loggers_made_before_configure_use_it():
    log = logs.get("probes")  # module-level loggers are created at import time, before configure()
    buf = io.StringIO()
    logs.configure("default:info", stream=buf)
    log.info("after", n=1)
    assert [line.split("\t", 1)[1] for line in buf.getvalue().splitlines()] == ["info\tprobes\tafter n=1"]


def test_bare_level_and_bad_level():
    assert logformat.parse_levels("debug")["default"] == Level.DEBUG
    with pytest.raises(logformat.LogConfigError, match='--log_output_level "default:verbose": unknown level "verbose"'):
        logformat.parse_levels("default:verbose")


@pytest.mark.parametrize("as_json", [False, True])
def test_both_writers_render_the_same_line(as_json, capture):
    """istio-iptables' writer and the sidecar's structlog chain print the same line for one event."""
    sidecar = capture("default:info", as_json)
    logs.get().warning("Istio iptables rules are in place")
    iptables = io.StringIO()
    writer = Logger()
    writer.configure(Level.INFO, as_json, iptables)
    writer.warning("Istio iptables rules %s", "are in place")
    strip = (lambda line: {**json.loads(line), "time": None}) if as_json else (lambda line: line.split("\t", 1)[1])
    assert [strip(line) for line in sidecar.getvalue().splitlines()] == [strip(line) for line in iptables.getvalue().splitlines()]
