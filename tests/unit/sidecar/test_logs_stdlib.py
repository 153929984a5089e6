"""Records of the standard library's `logging` (aiohttp, asyncio, grpc, warnings) come out as the
agent's lines: one each, no traceback, the configured format and per-scope levels; and text that can
come from a remote caller cannot break a line or reach the terminal raw."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings

from agent.logformat import one_line
from agent.sidecar import logs
from tests.support.status_server import bad_lines


def fields(line: str) -> list[str]:
    return line.split("\t")[1:]


def test_a_library_error_with_an_exception_is_one_line_in_its_scope(capture):
    buf = capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("grpc._cython.cygrpc").exception("Unexpected error in %s", "Serve")
    [line] = buf.getvalue().splitlines()
    assert fields(line) == ["error", "grpc", 'Unexpected error in Serve error="ValueError: bad thing"']


def test_json_and_multi_line_messages(capture):
    buf = capture(as_json=True)
    logging.getLogger("aiohttp.web").warning("first line\n  second\x1b[31m line\n")
    [rec] = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert {k: rec[k] for k in ("level", "scope", "msg", "detail")} == {
        "level": "warn", "scope": "aiohttp", "msg": "first line", "detail": "second\\x1b[31m line"}


def test_levels_per_scope_apply_to_libraries(capture):
    buf = capture("default:info,asyncio:none,aiohttp:debug")
    logging.getLogger("asyncio").error("hidden")
    logging.getLogger("aiohttp.server").debug("shown")
    logging.getLogger("other.lib").debug("hidden too")
    logging.getLogger("other.lib").info("shown too")
    assert [fields(line)[1:] for line in buf.getvalue().splitlines()] == [["aiohttp", "shown"], ["other", "shown too"]]


def test_library_debug_only_when_its_scope_is_named(capture):
    buf = capture("default:debug")
    logging.getLogger("hpack.hpack").debug("Decoded header")  # a library's detail: not the agent's
    logging.getLogger("aiohttp.server").debug("hidden too")
    logging.getLogger("aiohttp.server").info("shown")
    capture("default:info,aiohttp:debug")
    logging.getLogger("aiohttp.server").debug("shown too")
    assert logging.getLogger().level == logging.DEBUG
    assert [fields(line)[2] for line in buf.getvalue().splitlines()] == ["shown"]


async def test_a_task_exception_never_retrieved_is_one_line(capture):
    buf = capture()

    async def fails():
        raise RuntimeError("lost\nerror")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    del task
    gc.collect()  # the task's finalizer hands the exception to the loop's handler, which logs it
    [line] = buf.getvalue().splitlines()
    level, scope, rest = fields(line)
    assert (level, scope) == ("error", "asyncio") and rest.startswith("Task exception was never retrieved detail=")
    assert rest.endswith('error="RuntimeError: lost error"')


def test_a_warning_is_one_line(capture):
    buf = capture()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.configure("default:info", stream=buf)  # inside the block, as at the agent's start
        warnings.warn("careful", RuntimeWarning)
    [line] = buf.getvalue().splitlines()
    assert fields(line)[:2] == ["warn", "warnings"] and "RuntimeWarning: careful" in line


def test_remote_text_is_escaped_and_cut(capture):
    buf = capture("default:debug,aiohttp:debug")
    nasty = "GET /\x00\r\n2026-01-01T00:00:00.000000Z\terror\tforged\u2028\x85\udc80" + "a" * 1000
    logging.getLogger("aiohttp.server").debug("Error handling request %s", nasty, exc_info=ValueError(nasty))
    logs.get().info(nasty, header=nasty)  # the agent's own lines too, whatever they are given
    text = buf.getvalue()
    assert bad_lines(text, as_json=False) == [] and len(text.splitlines()) == 2
    assert len(text.splitlines()[0]) < 1000  # a library's text is cut, the agent's own is not
    assert "forged" in text and "\\r\\n2026" in text


def test_one_line():
    assert one_line("plain é") == "plain é"
    assert one_line("a\nb\tc\x1b\u2028\udc80") == "a\\nb\\tc\\x1b\\u2028\\udc80"
    assert one_line("abcdef", 3) == "abc..."


def test_field_values_with_control_characters_are_quoted(capture):
    buf = capture()
    logs.get().info("fields", cr="a\rb", esc="\x1b[2J", ok="é")
    [line] = buf.getvalue().splitlines()
    assert line.endswith('\tfields cr="a\\rb" esc="\\u001b[2J" ok=é')


def test_configured_twice_one_line_per_record(capture):
    capture()
    buf = capture()
    logging.getLogger("aiohttp.server").error("once")
    assert len(buf.getvalue().splitlines()) == 1
    assert sum(isinstance(h, logs.StdlibLines) for h in logging.getLogger().handlers) == 1


def test_a_closed_stream_drops_the_line_quietly(capture, capsys):
    buf = capture()
    buf.close()
    logging.getLogger("aiohttp.server").error("nowhere to go")
    assert capsys.readouterr().err == ""
