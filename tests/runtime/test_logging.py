"""Log files: JSON lines in a private file that rotates at a configured size, keeping N backups."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bhiv_core.runtime.logging import JsonFormatter, PrivateRotatingFileHandler, configure_logging, log_file
from tests.harness import umask


@pytest.fixture
def umask_022() -> Iterator[None]:
    with umask(0o022):
        yield


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.rotation")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def attach(log: logging.Logger, path: Path, max_bytes: int, backups: int) -> None:
    handler = PrivateRotatingFileHandler(path, max_bytes, backups)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_file_rotates_before_a_line_would_pass_the_size_keeping_the_backups(
    tmp_path: Path, logger: logging.Logger, umask_022: None
) -> None:
    path = tmp_path / "logs" / "crm.log"
    attach(logger, path, max_bytes=1000, backups=2)
    for number in range(100):
        logger.info("line %03d %s", number, "x" * 90)  # 100 bytes with its newline
    assert sorted(p.name for p in path.parent.iterdir()) == ["crm.log", "crm.log.1", "crm.log.2"]
    assert [p.stat().st_size for p in (path, path.with_name("crm.log.1"), path.with_name("crm.log.2"))] == [
        1000,
        1000,
        1000,
    ]
    kept = lines(path.with_name("crm.log.2")) + lines(path.with_name("crm.log.1")) + lines(path)
    assert [line[:8] for line in kept] == [f"line {n:03d}" for n in range(70, 100)]  # the newest, in order
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()} == {0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_file_counts_towards_the_size_and_becomes_0600(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "crm.log"
    path.write_text("y" * 950 + "\n")
    os.chmod(path, 0o644)
    attach(logger, path, max_bytes=1000, backups=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    logger.info("z" * 99)
    assert lines(path) == ["z" * 99]
    assert lines(path.with_name("crm.log.1")) == ["y" * 950]


def test_a_line_longer_than_the_size_gets_a_file_of_its_own(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "crm.log"
    attach(logger, path, max_bytes=100, backups=3)
    logger.info("short")
    logger.info("é" * 200)  # 400 bytes of UTF-8
    logger.info("after")
    assert [lines(path.with_name(n)) for n in ("crm.log.2", "crm.log.1", "crm.log")] == [
        ["short"],
        ["é" * 200],
        ["after"],
    ]


def test_no_backups_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backups"):
        PrivateRotatingFileHandler(tmp_path / "crm.log", 1000, 0)


def test_each_worker_of_a_service_has_its_own_file(tmp_path: Path) -> None:
    assert log_file(tmp_path, "crm") == tmp_path / "crm.log"
    assert log_file(tmp_path, "crm", 2) == tmp_path / "crm-2.log"


def test_configure_logging_writes_json_lines_to_the_file(tmp_path: Path, root_restored: None) -> None:
    configure_logging("crm", "info", "json", file=log_file(tmp_path, "crm", 1), max_bytes=4096, backups=2)
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, PrivateRotatingFileHandler)
    assert isinstance(handler.formatter, JsonFormatter)
    logging.getLogger("bhiv.requests").info("served", extra={"code": "OK"})
    [line] = lines(tmp_path / "crm-1.log")
    assert {k: v for k, v in json.loads(line).items() if k != "ts"} == {
        "level": "info",
        "service": "crm",
        "logger": "bhiv.requests",
        "msg": "served",
        "code": "OK",
    }
