"""Private files: everything the platform writes under its data directory is for its owner only.

Folders are 0700 and files 0600 from the moment they exist, whatever the umask of the process
that creates them: the modes are given at creation and then set exactly, because ``mkdir`` and
``open`` only ever take bits away (a umask of 0o177 would leave a 0400 file). A data directory an
earlier release left readable by others is tightened at start (:func:`tighten_tree`).
Each process also runs with umask 0o077 (:data:`PRIVATE_UMASK`), so files made by code that
does not come through here (SQLite's ``-wal`` and ``-shm``, prometheus_client's shared files,
Envoy's access log) are private too.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Final

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PRIVATE_UMASK",
    "create_once",
    "fsync_directory",
    "open_private",
    "private_dir",
    "tighten_tree",
    "write_private_beside",
]

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_UMASK: Final = 0o077
"""The umask of every process of the platform: no permission for group or others."""

_GROUP_OTHER: Final = 0o077


def _create_dirs(path: Path) -> bool:
    """Creates ``path`` and its missing parents, each 0700; False when ``path`` existed."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileNotFoundError:
        _create_dirs(path.parent)
        return _create_dirs(path)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder") from None
        return False
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode went through the umask
    return True


def private_dir(path: Path) -> Path:
    """Creates the folder ``path`` owner-only (0700), or takes group and other access from it.

    Missing parents are created owner-only too; existing parents are left as they are.

    Returns:
        ``path``.

    Raises:
        OSError: It cannot be created, is not a folder, or belongs to another user.

    """
    if not _create_dirs(path):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & _GROUP_OTHER:
            os.chmod(path, mode & ~_GROUP_OTHER)
    return path


def _private_fd(path: Path, flags: int) -> int:
    """Opens ``path`` with ``flags`` (creating it 0600); makes an existing file 0600 too."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, mode: str = "ab", *, encoding: str | None = None) -> IO[Any]:
    """Opens ``path`` for writing as ``open(path, mode)`` would, as an owner-only (0600) file.

    Args:
        path: The file; created when missing, its mode set to 0600 when it exists.
        mode: ``"a"`` or ``"w"`` (append or truncate), with ``"b"`` for bytes.
        encoding: The text encoding, for a text mode.

    """
    kind = mode.replace("b", "")
    if kind not in ("a", "w"):
        raise ValueError(f"open_private writes only ('a' or 'w', optionally with 'b'), got {mode!r}")
    flags = os.O_WRONLY | (os.O_APPEND if kind == "a" else os.O_TRUNC)
    fd = _private_fd(path, flags)
    return os.fdopen(fd, mode, encoding=encoding)


def fsync_directory(path: Path) -> None:
    """Makes the entries of the folder ``path`` (a new, linked or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_beside(path: Path, data: bytes, suffix: str) -> Path:
    """Writes ``data`` to a new owner-only (0600) file next to ``path``, synced to disk; returns it.

    The caller then moves or links it into place, so nobody ever reads a partial ``path``.
    """
    _create_dirs(path.parent)  # missing folders are created 0700; an existing one is left as it is
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}")
    fd = _private_fd(temporary, os.O_WRONLY | os.O_EXCL)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return temporary


def create_once(path: Path, data: bytes) -> tuple[bytes, bool]:
    """Returns the content of ``path``, first writing ``data`` there (0600) if it does not exist.

    Creation is atomic: ``data`` goes to a private temporary file that is hard-linked into place,
    which fails if another process got there first (then its content is returned), so a reader never
    sees a partial file and two processes never end up with different content (a generated key).

    Returns:
        The file's content, and True when this call created it.

    """
    try:
        return path.read_bytes(), False
    except FileNotFoundError:
        pass
    temporary = write_private_beside(path, data, "tmp")
    created = True
    try:
        os.link(temporary, path)
    except FileExistsError:
        created = False
    finally:
        temporary.unlink()
    fsync_directory(path.parent)
    return path.read_bytes(), created


def tighten_tree(root: Path) -> list[Path]:
    """Takes group and other access from ``root`` and every folder and file below it.

    Symbolic links are neither followed nor changed, so nothing outside ``root`` is touched.

    Returns:
        The paths whose mode changed (an earlier release's leftovers), for the log.

    """
    changed: list[Path] = []

    def tighten(path: Path) -> None:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)) and mode & _GROUP_OTHER:
            os.chmod(path, mode & ~_GROUP_OTHER)
            changed.append(path)

    if not root.exists():
        return changed
    tighten(root)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            tighten(Path(folder, name))
    return changed
