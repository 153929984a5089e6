"""Istio's text line format, JSON, and per-scope levels."""
import io
import json
import re

import pytest

from agent.sidecar import logs


@pytest.fixture(params=["structlog", "early"])
def mode(request):
    """Every format test runs twice: through structlog, and through the writer used before structlog is adopted."""
    return request.param


@pytest.fixture
def _capture(mode):
    def capture(level="default:info", as_json=False):
        buf = io.StringIO()
        logs.configure(level, as_json, stream=buf, defer_structlog=(mode == "early"))
        return buf
    return capture


def test_text_line_format(_capture):
    buf = _capture()
    logs.get().info("Envoy proxy is ready", pid=7, reason="two words")
    line = buf.getvalue().rstrip("\n")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\tinfo\tEnvoy proxy is ready pid=7 reason=\"two words\"", line)


def test_scope_printed_unless_default_and_warn_level_name(_capture):
    buf = _capture("default:info,probes:debug")
    logs.get("probes").debug("app probe", status=200)
    logs.get().warning("careful")
    first, second = buf.getvalue().splitlines()
    assert first.split("\t")[1:] == ["debug", "probes", "app probe status=200"]
    assert second.split("\t")[1:] == ["warn", "careful"]


def test_levels_filter_per_scope(_capture):
    buf = _capture("default:warn,probes:none")
    logs.get().info("hidden")
    logs.get("probes").error("hidden too")
    logs.get("other").warning("shown")
    assert [line.split("\t")[-1] for line in buf.getvalue().splitlines()] == ["shown"]


def test_json_output(_capture):
    buf = _capture(as_json=True)
    logs.get().error("Envoy exited", code=1)
    rec = json.loads(buf.getvalue())
    assert rec["level"] == "error" and rec["msg"] == "Envoy exited" and rec["code"] == 1
    assert rec["scope"] == "default" and rec["time"].endswith("Z")


def test_bare_level_and_bad_level():
    assert logs.parse_levels("debug")["default"] == logs.LEVELS["debug"]
    with pytest.raises(logs.LogConfigError, match="verbose"):
        logs.parse_levels("default:verbose")


def _lines_without_time(buf):
    return [line.split("\t", 1)[1] if "\t" in line else json.dumps({**json.loads(line), "time": None})
            for line in buf.getvalue().splitlines()]


def _emit_all(log_module):
    log_module.get().info("plain")
    log_module.get().info("fields", a=1, b="two words", c="", d={"k": [1, 2]}, e="x=y")
    log_module.get("probes").warning("scoped %s", "arg", status=503)
    log_module.get("probes").bind(container="app").error("bound", kind="readyz")
    log_module.get().warn("warn alias")
    log_module.get().critical("critical")
    log_module.get().exception("with exc_info")
    log_module.get("other").debug("filtered out")


@pytest.mark.parametrize("as_json", [False, True])
def test_early_writer_and_structlog_write_the_same_lines(as_json):
    outputs = []
    for defer in (True, False):
        buf = io.StringIO()
        logs.configure("default:info,probes:debug", as_json, stream=buf, defer_structlog=defer)
        _emit_all(logs)
        outputs.append(_lines_without_time(buf))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 7


def test_adopt_structlog_keeps_the_output_and_loggers_made_before_it():
    import structlog

    buf = io.StringIO()
    log = logs.get("probes")  # module-level loggers are created before configure()
    logs.configure("default:info", stream=buf, defer_structlog=True)
    log.info("before")
    assert structlog.get_config()["processors"][-1] is not logs.render_text  # structlog not configured yet
    logs.adopt_structlog()
    assert structlog.get_config()["processors"][-1] is logs.render_text
    log.info("after", n=1)
    assert [line.split("\t", 1)[1] for line in buf.getvalue().splitlines()] == [
        "info\tprobes\tbefore", "info\tprobes\tafter n=1"]
