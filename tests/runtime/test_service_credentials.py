"""The service secret file, client assertions and their replay guard (no server: identity's side is
tested in tests/services/identity/test_service_tokens.py, the whole grant in tests/e2e)."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from bhiv_core.registry import SERVICES
from bhiv_core.runtime.config import ConfigError
from bhiv_core.runtime.service_credentials import (
    SERVICE_SCOPES,
    AssertionClaims,
    AssertionRefused,
    ReplayGuard,
    load_service_secret,
    service_secret_path,
    sign_assertion,
    verify_assertion,
)
from tests.harness import config_for, umask


def test_the_secret_is_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "service-secret"
    with umask(0):
        secret = load_service_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(secret) >= 32
    assert load_service_secret(path) == secret  # read, not made again


def _load(path: str) -> bytes:
    return load_service_secret(Path(path))


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "service-secret")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        secrets = pool.map(_load, [path] * 8)
    assert len(set(secrets)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["service-secret"]  # no temporary file left


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620])
def test_a_secret_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "service-secret"
    path.write_bytes(b"s" * 48)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="open to other users"):
        load_service_secret(path)


def test_a_mounted_read_only_secret_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "service-secret"
    path.write_bytes(b"s" * 48 + b"\n")
    path.chmod(0o440)
    assert load_service_secret(path) == b"s" * 48


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "service-secret"
    path.write_bytes(b"short\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="too short"):
        load_service_secret(path)


def test_the_secret_file_is_a_setting_with_a_default_in_the_data_dir(tmp_path: Path) -> None:
    assert service_secret_path(config_for("crm", DATA_DIR=str(tmp_path))) == tmp_path / "service-secret"
    chosen = tmp_path / "mounted" / "secret"
    assert service_secret_path(config_for("crm", SERVICE_SECRET_FILE=str(chosen))) == chosen


def test_every_service_may_report_security_events_and_only_the_publishers_may_relay_events() -> None:
    publishers = {"crm", "logistics", "orchestration", "sentinel"}
    assert {
        spec.name: frozenset({"sentinel.events.write"})
        | ({"integrations.events.publish"} if spec.name in publishers else set())
        for spec in SERVICES
    } == SERVICE_SCOPES


def test_an_assertion_verifies_with_its_secret_only() -> None:
    assertion = sign_assertion(b"k" * 43, "crm", now=1000.0)
    claims = verify_assertion(assertion, b"k" * 43, now=1010.0)
    assert (claims.service, claims.expires_at) == ("crm", 1030.0)
    with pytest.raises(AssertionRefused, match="bad signature") as refused:
        verify_assertion(assertion, b"j" * 43, now=1010.0)
    assert refused.value.service == "crm"


def test_the_replay_guard_accepts_an_id_once_and_stays_bounded() -> None:
    now = [1000.0]
    guard = ReplayGuard(capacity=2, clock=lambda: now[0])
    guard.accept(AssertionClaims("crm", "a" * 16, 1030.0))
    with pytest.raises(AssertionRefused, match="replayed"):
        guard.accept(AssertionClaims("crm", "a" * 16, 1030.0))
    guard.accept(AssertionClaims("crm", "b" * 16, 1050.0))
    with pytest.raises(AssertionRefused, match="too many"):
        guard.accept(AssertionClaims("crm", "c" * 16, 1050.0))
    now[0] = 1040.0  # the first has expired (and its leeway passed): its slot is free again
    guard.accept(AssertionClaims("crm", "c" * 16, 1070.0))
