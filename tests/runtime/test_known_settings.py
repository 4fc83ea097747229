"""The README's configuration table documents exactly the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from bhiv_core.registry import SERVICES
from bhiv_core.runtime.known_settings import KNOWN_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def documented_settings() -> set[str]:
    """Every ``BHIV_*`` name in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `BHIV_"):
            for name in re.findall(r"`(BHIV_[A-Z0-9_<>]+)`", line.split(" | ", 1)[0]):
                names |= {name.replace("<SERVICE>", s.name.upper()) for s in SERVICES}
    return names


def test_the_readme_table_lists_every_known_setting_and_no_other() -> None:
    known = {f"BHIV_{name}" for name in KNOWN_SETTINGS}
    documented = documented_settings()
    assert known - documented == set(), "known but not in the README's configuration table"
    assert documented - known == set(), "in the README's table but not in runtime/known_settings.py"
