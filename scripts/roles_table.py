"""Prints the role → permission matrix as a Markdown table, or rewrites it in README.md.

Usage: ``python scripts/roles_table.py [--write]``. The README's table sits between the markers
``<!-- roles:begin -->`` and ``<!-- roles:end -->``; a test fails when it differs from the matrix.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bhiv_core.security.roles import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, ROLES, all_permissions

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- roles:begin -->", "<!-- roles:end -->"


def table() -> str:
    """The matrix as Markdown: one row per permission, one column per role."""
    lines = ["| permission | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for permission in sorted(all_permissions()):
        marks = ["✓" if permission in ROLE_PERMISSIONS[role] else "" for role in ROLES]
        lines.append(f"| `{permission}` | " + " | ".join(marks) + " |")
    lines.append("")
    lines.extend(f"- **{role}**: {ROLE_DESCRIPTIONS[role]}" for role in ROLES)
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """Returns ``text`` with the table between the markers replaced by the current matrix."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    """Prints the table, or with ``--write`` updates README.md."""
    if "--write" in sys.argv:
        README.write_text(rewrite(README.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
