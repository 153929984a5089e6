"""Golden files: compared by default, rewritten with UPDATE_GOLDENS=1 (then review the git diff).

One switch for every golden in the suite, through the `goldens` fixture (tests/conftest.py):

    def test_golden(name, goldens):
        goldens.check(GOLDEN / f"{name}.golden", render(name))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SWITCH = "UPDATE_GOLDENS"


@dataclass(frozen=True, slots=True)
class Goldens:
    update: bool

    @classmethod
    def from_env(cls) -> "Goldens":
        return cls(os.environ.get(SWITCH) == "1")

    def check(self, path: Path, got: str) -> None:
        """`got` must equal the file at `path`; when updating, the file becomes `got` first."""
        if self.update:
            path.write_text(got)
        assert path.exists(), f"missing {path}; run with {SWITCH}=1 to create it"
        assert got == path.read_text(), f"{path} differs; if the change is intended, rerun with {SWITCH}=1 and review the git diff"
