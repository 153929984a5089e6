"""A small cobra/pflag-compatible command-line parser, standard library only.

Every setting is declared once as a `Flag` (long name, short name, env vars, kind, default, help).
`parse()` applies Istio's precedence: default < env var(s) (later ones win) < command-line flag.
The same table renders `--help` and the README's settings tables.

pflag rules kept on purpose (Istio's injected command lines depend on them):
- `--name value`, `--name=value`, `-n value`, `-n=value`, `-nvalue`; `-x ""` is an empty value.
- boolean flags take no value; `--flag=false` is accepted.
- positional arguments are collected, `--` ends the flags.
- an env value that does not parse is ignored (Istio silently keeps the previous value).
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.exitcodes import Exit

TRUE = {"1", "t", "T", "TRUE", "true", "True"}
FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class UsageError(Exception):
    """A bad command line. The edge maps it to exit 255, as `pilot-agent` does (os.Exit(-1))."""


def parse_bool(text: str) -> bool:
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


#: Go's duration units in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: <decimal number><unit>, e.g. 1h, 1.5s, .5m, 1.ms; "ms" is tried before "m" and "s".
_PART = r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)"
_DURATION = re.compile(f"(?:{_PART})+")
_DURATION_PART = re.compile(_PART)


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, returning seconds: '45s', '1m0s', '300ms', '1h2m3.5s', '0'."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    if not _DURATION.fullmatch(s):
        raise ValueError(f"invalid duration {text!r}")
    return sign * sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(s))


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for display, in Go's style ('45s', '1m0s', '500ms')."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    out = f"{int(h)}h" if h else ""
    out += f"{int(m)}m" if (h or m) else ""
    return out + f"{s:g}s"


def parse_uint16(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 65535:
        raise ValueError(f"value out of range {text!r}")
    return value


def parse_int(text: str) -> int:
    return int(text, 0)


PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "bool": parse_bool,
    "duration": parse_duration,
    "uint16": parse_uint16,
    "int": parse_int,
}


class Flag:
    """One setting: long name, kind (str, bool, duration, uint16, int), default, short name, env
    vars (later ones win), help, and `dest`, the attribute name (default: the long name in
    snake_case). Immutable.

    A plain slotted class, not a dataclass: this module is on the istio-iptables path (every pod's
    init container), where importing dataclasses costs 4.5 ms of the 5 ms that path may grow by."""

    __slots__ = ("name", "kind", "default", "short", "env", "help", "dest")

    def __init__(self, name: str, kind: str = "str", default: Any = "", short: str | None = None,
                 env: tuple[str, ...] = (), help: str = "", dest: str = "") -> None:
        for key, value in (("name", name), ("kind", kind), ("default", default), ("short", short),
                           ("env", tuple(env)), ("help", help), ("dest", dest)):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Flag is immutable (setting {key!r})")

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, key) for key in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Flag) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Flag({self.name!r}, kind={self.kind!r}, default={self.default!r})"

    @property
    def attr(self) -> str:
        return self.dest or self.name.replace("-", "_")

    def convert(self, text: str) -> Any:
        return PARSERS[self.kind](text)

    def text(self, value: Any) -> str:
        """A value as the command line spells it (Go style: `45s`, `true`)."""
        if self.kind == "duration":
            return format_duration(value)
        if self.kind == "bool":
            return "true" if value else "false"
        return str(value)

    def default_text(self) -> str:
        return self.text(self.default) if self.default != "" else '""'


class Parsed:
    """What parse() found: every flag's value by attr, and where the non-defaults came from."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.explicit: set[str] = set()  # attrs set by a flag on the command line
        self.from_env: set[str] = set()  # attrs set by an environment variable
        self.positional: list[str] = []
        self.unknown: list[str] = []
        self.help = False


def parse(
    flags: Sequence[Flag],
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    allow_unknown: bool = False,
) -> Parsed:
    """Resolve every flag: default, then env vars in order, then the command line."""
    result = Parsed(values={f.attr: f.default for f in flags})
    for f in flags:
        for var in f.env:
            if var in environ:
                try:
                    result.values[f.attr] = f.convert(environ[var])
                    result.from_env.add(f.attr)
                except ValueError:
                    pass  # Istio ignores an env value that does not parse
    by_long = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            result.positional.extend(args[i:])
            break
        if arg in ("-h", "--help"):
            result.help = True
            continue
        if not arg.startswith("-") or arg == "-":
            result.positional.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            flag = by_long.get(name)
        else:
            name, rest = arg[1:2], arg[2:]
            flag = by_short.get(name)
            eq, inline = ("=", rest[1:]) if rest.startswith("=") else (("=", rest) if rest else ("", ""))
        if flag is None:
            if not allow_unknown:
                raise UsageError(f"unknown flag: {_shown(arg.split('=')[0])}")
            result.unknown.append(arg)
            # pflag's stripUnknownFlagValue: a following non-flag word is the unknown flag's value.
            if not eq and i < len(args) and not args[i].startswith("-"):
                result.unknown.append(args[i])
                i += 1
            continue
        if flag.kind == "bool" and not eq:
            text = "true"
        elif eq:
            text = inline
        elif i < len(args):
            text = args[i]
            i += 1
        else:
            raise UsageError(f"flag needs an argument: {arg}")
        try:
            result.values[flag.attr] = flag.convert(text)
        except ValueError:
            raise UsageError(f'invalid argument "{_shown(text)}" for "--{flag.name}" flag') from None
        result.explicit.add(flag.attr)
    return result


def _shown(text: str) -> str:
    """A value as one line, whatever it holds: control characters and line breaks escaped
    (pflag prints values with Go's %q, which does the same)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def parse_command(usage_line: str, table: Sequence[Flag], argv: Sequence[str],
                  environ: Mapping[str, str]) -> Parsed | int:
    """parse() for a small subcommand: the Parsed flags, or the exit code once `--help` (0) or a bad
    command line (`Error: ...` on stderr, 255, pilot-agent's os.Exit(-1)) has been handled."""
    try:
        parsed = parse(table, argv, environ)
    except UsageError as e:
        sys.stderr.write(f"Error: {e}\n")
        return Exit.USAGE
    if parsed.help:
        sys.stdout.write(usage(usage_line, table))
        return Exit.OK
    return parsed


#: pilot-agent's persistent logging flags, accepted by every subcommand (the injector passes them).
LOG_FLAGS = (
    Flag("log_output_level", default="default:info", help="comma list of scope:level (debug, info, warn, error, fatal, none)"),
    Flag("log_as_json", kind="bool", default=False, help="log as JSON instead of Istio's text lines"),
    Flag("log_target", default="stdout", help="where logs go: stdout, stderr or a file path (comma list)"),
    Flag("log_caller", default="", help="accepted for compatibility; ignored"),
    Flag("log_stacktrace_level", default="default:none", help="accepted for compatibility; ignored"),
)

#: istio-iptables takes the same flags, but its stdout carries the rules (the dry-run transcript, the
#: nft script), so its log always goes to stderr and --log_target is only accepted.
INIT_LOG_FLAGS = tuple(
    Flag("log_target", default="stderr", help="accepted for compatibility; logs always go to stderr")
    if f.name == "log_target" else f for f in LOG_FLAGS)


def usage(title: str, flags: Sequence[Flag]) -> str:
    """The --help text: one line per flag with its short form, env vars and default."""
    lines = [title, "", "Flags:"]
    for f in flags:
        names = (f"-{f.short}, " if f.short else "    ") + f"--{f.name}"
        if f.kind != "bool":
            names += f" {f.kind}"
        env = f" [env {', '.join(f.env)}]" if f.env else ""
        lines.append(f"  {names:<48} {f.help} (default {f.default_text()}){env}")
    lines.append("  -h, --help" + " " * 40 + "help for this command")
    return "\n".join(lines) + "\n"


def markdown_table(flags: Sequence[Flag]) -> str:
    """The README table for a flag set, generated from the same declarations."""
    rows = ["| flag | short | env var(s) | default | meaning |", "|---|---|---|---|---|"]
    for f in flags:
        short = f"`-{f.short}`" if f.short else ""
        env = ", ".join(f"`{e}`" for e in f.env)
        rows.append(f"| `--{f.name}` | {short} | {env} | `{f.default_text()}` | {f.help} |")
    return "\n".join(rows) + "\n"
