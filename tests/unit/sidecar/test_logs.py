"""Istio's text line format, JSON, and per-scope levels."""
import io
import json
import re

import pytest

from agent.sidecar import logs


def _capture(level="default:info", as_json=False):
    buf = io.StringIO()
    logs.configure(level, as_json, stream=buf)
    return buf


def test_text_line_format():
    buf = _capture()
    logs.get().info("Envoy proxy is ready", pid=7, reason="two words")
    line = buf.getvalue().rstrip("\n")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\tinfo\tEnvoy proxy is ready pid=7 reason=\"two words\"", line)


def test_scope_printed_unless_default_and_warn_level_name():
    buf = _capture("default:info,probes:debug")
    logs.get("probes").debug("app probe", status=200)
    logs.get().warning("careful")
    first, second = buf.getvalue().splitlines()
    assert first.split("\t")[1:] == ["debug", "probes", "app probe status=200"]
    assert second.split("\t")[1:] == ["warn", "careful"]


def test_levels_filter_per_scope():
    buf = _capture("default:warn,probes:none")
    logs.get().info("hidden")
    logs.get("probes").error("hidden too")
    logs.get("other").warning("shown")
    assert [line.split("\t")[-1] for line in buf.getvalue().splitlines()] == ["shown"]


def test_json_output():
    buf = _capture(as_json=True)
    logs.get().error("Envoy exited", code=1)
    rec = json.loads(buf.getvalue())
    assert rec["level"] == "error" and rec["msg"] == "Envoy exited" and rec["code"] == 1
    assert rec["scope"] == "default" and rec["time"].endswith("Z")


def test_bare_level_and_bad_level():
    assert logs.parse_levels("debug")["default"] == logs.LEVELS["debug"]
    with pytest.raises(logs.LogConfigError, match="verbose"):
        logs.parse_levels("default:verbose")
