"""Prints the platform event types as a Markdown table, or rewrites it in README.md.

Usage: ``python scripts/event_types_table.py [--write]``. The README's table sits between the
markers ``<!-- event-types:begin -->`` and ``<!-- event-types:end -->``; a test fails when it
differs from the catalog (``bhiv_core.events.catalog.event_types()``, read from the contracts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from bhiv_core.events.catalog import event_types

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- event-types:begin -->", "<!-- event-types:end -->"

_JSON_TYPES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT32: "number",
    FieldDescriptor.TYPE_INT64: "string (int64)",
    FieldDescriptor.TYPE_BOOL: "boolean",
}


def _field(field: Any) -> str:  # a FieldDescriptor (upb's or the Python one)
    kind = _JSON_TYPES.get(field.type, "object")
    if field.is_repeated:
        kind = f"list of {kind}s"
    return f"`{field.name}` ({kind})"


def table() -> str:
    """The catalog as Markdown: one row per event type, with its payload's fields (``data``)."""
    lines = ["| type | meaning | payload message | `data` fields |", "|---|---|---|---|"]
    for info in event_types().values():
        fields = ", ".join(_field(f) for f in info.message.DESCRIPTOR.fields)
        lines.append(f"| `{info.type}` | {info.description} | `{info.payload_message}` | {fields} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """Returns ``text`` with the table between the markers replaced by the current catalog."""
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
