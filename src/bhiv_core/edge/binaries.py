"""Finds the external tools the edge needs (``envoy``, ``grpcurl``, ``buf``).

``make setup`` installs them into ``<repo>/.tools/bin``; that copy is preferred over whatever is on
``PATH`` so every developer and CI job runs the pinned versions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["TOOLS_BIN", "find_tool"]

# src/bhiv_core/edge/binaries.py -> parents[3] is the repository root.
TOOLS_BIN = Path(__file__).resolve().parents[3] / ".tools" / "bin"


def find_tool(name: str) -> Path:
    """Return the path of the executable ``name``.

    Looks in ``<repo>/.tools/bin`` first (the versions pinned by ``make setup``), then on ``PATH``.

    Args:
        name: The executable's file name, like ``envoy``.

    Returns:
        The absolute path of an executable file.

    Raises:
        FileNotFoundError: When neither place has it; the message says to run ``make setup``.

    """
    pinned = TOOLS_BIN / name
    if pinned.is_file() and _is_executable(pinned):
        return pinned
    found = shutil.which(name)
    if found is not None:
        return Path(found).resolve()
    raise FileNotFoundError(
        f"{name!r} was found neither in {TOOLS_BIN} nor on PATH; run `make setup` to install the pinned tools"
    )


def _is_executable(path: Path) -> bool:
    """Tell whether ``path`` may be executed by this user."""
    return shutil.which(path.name, path=str(path.parent)) is not None
