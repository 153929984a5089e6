"""Reports how many generated inputs each property tried (the figure docs/testing.md quotes)."""
from __future__ import annotations

from tests.property.strategies import TRIED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TRIED:
        return
    terminalreporter.section("hypothesis inputs tried")
    for name, count in sorted(TRIED.items()):
        terminalreporter.write_line(f"{count:7d}  {name}")
    terminalreporter.write_line(f"{sum(TRIED.values()):7d}  total")
