"""JSON logs, one object per line, carrying the service name and the current trace id.

Logs go to stderr, or to ``<BHIV_LOG_DIR>/<service>.log`` (``<service>-<n>.log`` for worker ``n``
of several), which rotates when the next line would take it past ``BHIV_LOG_MAX_BYTES``, keeping
``BHIV_LOG_BACKUPS`` older files (``<service>.log.1`` is the newest); every file is owner-only.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

from bhiv_core.runtime.files import open_private, private_dir
from bhiv_core.runtime.trace_context import current_trace_id

__all__ = [
    "DEFAULT_LOG_BACKUPS",
    "DEFAULT_LOG_MAX_BYTES",
    "JsonFormatter",
    "PrivateRotatingFileHandler",
    "configure_logging",
    "log_file",
]

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, service, trace id, extras."""

    def __init__(self, service: str):
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Returns the record as a JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # A record that carries its trace id (the request log) keeps it; others get the current one.
        if "trace_id" not in record.__dict__:
            trace_id = current_trace_id()
            if trace_id:
                out["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotating log file whose every file, the current one and each backup, is 0600.

    Unlike its base class, it formats each record once and counts the bytes it wrote instead of
    asking the file (the request log writes a line per call), and it rotates before a line would
    take the file past ``maxBytes``, so no file is larger unless a single line is.

    Args:
        path: The log file; its folder is created owner-only.
        max_bytes: The most bytes a file holds (at least 1).
        backups: How many older files are kept (at least 1: with none, the base class would never
            shrink the file).

    """

    def __init__(self, path: Path, max_bytes: int, backups: int):
        if max_bytes < 1 or backups < 1:
            raise ValueError("a rotating log needs max_bytes >= 1 and backups >= 1")
        self._size = 0
        private_dir(path.parent)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        stream = cast(io.TextIOWrapper, open_private(Path(self.baseFilename), "a", encoding="utf-8"))
        self._size = os.fstat(stream.fileno()).st_size
        return stream

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """True when ``record``'s line would take a non-empty file past ``maxBytes``."""
        return self._would_overflow(_size_of(self.format(record) + self.terminator))

    def _would_overflow(self, size: int) -> bool:
        return self._size > 0 and self._size + size > self.maxBytes

    def emit(self, record: logging.LogRecord) -> None:
        """Writes the record's line, first rotating when it would not fit."""
        try:
            line = self.format(record) + self.terminator
            size = _size_of(line)
            if self._would_overflow(size):
                self.doRollover()
            stream = self.stream
            if stream is None:  # closed by a rotation that failed half-way
                stream = self.stream = self._open()
            stream.write(line)
            stream.flush()
            self._size += size
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _size_of(line: str) -> int:
    """The UTF-8 length of ``line`` (its length, for the ASCII of JSON lines)."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "replace"))


def log_file(directory: Path, service: str, worker: int | None = None) -> Path:
    """The log file of ``service`` in ``directory``: ``<service>.log``, or ``<service>-<n>.log``.

    Each worker process of a service has its own file, since a file rotated by one process would
    keep being written by the others.
    """
    return directory / (f"{service}.log" if worker is None else f"{service}-{worker}.log")


def configure_logging(
    service: str,
    level: str = "info",
    fmt: str = "json",
    *,
    file: Path | None = None,
    max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    backups: int = DEFAULT_LOG_BACKUPS,
) -> None:
    """Sends the root logger to stderr, or to a rotating ``file``, as JSON (or plain text) at ``level``.

    Args:
        service: The service name on every line.
        level: debug, info, warning or error.
        fmt: ``json`` or ``text``.
        file: The log file (:func:`log_file`); stderr when None.
        max_bytes: Size at which the file rotates.
        backups: How many rotated files are kept.

    """
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr)
        if file is None
        else PrivateRotatingFileHandler(file, max_bytes, backups)
    )
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
