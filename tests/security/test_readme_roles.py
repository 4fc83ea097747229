from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_role_table_matches_the_matrix() -> None:
    spec = importlib.util.spec_from_file_location("roles_table", ROOT / "scripts" / "roles_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "README.md").read_text()
    assert module.BEGIN in text, "README has no role table"
    assert module.rewrite(text) == text, (
        "README's role table is stale: run python scripts/roles_table.py --write"
    )
