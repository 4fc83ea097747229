"""Fixtures of the fuzz suite: a mesh of its own, a user per role, channels, and health watches.

The fuzzer gets a mesh of its own (one for the module, torn down after it): it logs in with
random passwords, rotates keys and floods the audit log, which would disturb the other end-to-end
tests' shared mesh. Login throttling is raised out of its way (it calls from one address and would
otherwise lock itself out within seconds, blinding the rest of the run).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from bhiv_core.mesh import Mesh
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.contracts import policy_of, services_of_package
from tests.e2e.client import CALL_TIMEOUT
from tests.fuzz import calls, profile
from tests.fuzz.credentials import Credentials, credentials_for

FUZZ_ENV = {
    "BHIV_SCRYPT_LOG_N": "12",
    "BHIV_REVOCATION_POLL_SECONDS": "0.2",
    "BHIV_LOG_LEVEL": "warning",
    "BHIV_LOGIN_BACKOFF_AFTER": "1000000000",
    "BHIV_LOGIN_ADDRESS_BACKOFF_AFTER": "1000000000",
    "BHIV_LOGIN_ACCOUNT_BACKOFF_AFTER": "1000000000",
    "BHIV_EDGE_RATE_LIMIT_PER_ADDRESS": "1000000",
    "BHIV_EDGE_LOGIN_RATE_LIMIT": "1000000",
}

FUZZ_TEST = "test_rpc_answers_every_probe_cleanly"

REVOCATION_DEADLINE = 30.0
"""Seconds every service gets to refuse the revoked token before fuzzing starts."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Says how many probes the run made, with its profile and seed (what a report must quote)."""
    from tests.fuzz.test_fuzz import PROBES_MADE  # imported by now when the suite ran

    if PROBES_MADE:
        chosen = profile.current()
        terminalreporter.write_line(
            f"fuzz: {sum(PROBES_MADE.values())} probes to {len(PROBES_MADE)} RPCs "
            f"(profile {chosen.name}, FUZZ_SEED={chosen.seed})"
        )


@pytest.fixture(scope="module")
def fuzz_profile() -> profile.FuzzProfile:
    return profile.current()


@pytest.fixture(scope="module")
def seconds_per_rpc(request: pytest.FixtureRequest, fuzz_profile: profile.FuzzProfile) -> float:
    """Each RPC's share of the run's time: the RPCs selected (``-k``) share all of it."""
    selected = [i for i in request.session.items if getattr(i, "originalname", "") == FUZZ_TEST]
    return fuzz_profile.seconds / max(1, len(selected))


@pytest.fixture(scope="module")
async def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    started = Mesh.with_free_ports(tmp_path_factory.mktemp("fuzz"), env=FUZZ_ENV, edge_rate_limit=1_000_000)
    async with started:
        yield started


@pytest.fixture(scope="module")
def channels(fuzz_mesh: Mesh) -> Iterator[dict[str, grpc.Channel]]:
    """A channel to the edge and one to each service, by target name (``edge``, ``crm``, ...)."""
    made = {"edge": calls.channel(fuzz_mesh.edge_address)}
    made |= {s.name: calls.channel(fuzz_mesh.address(s.name)) for s in SERVICES}
    yield made
    for channel in made.values():
        channel.close()


def _wait_until_refused(mesh: Mesh, token: str) -> None:
    """Waits until every service refuses ``token`` (revocations reach them by polling identity)."""
    metadata = (("authorization", f"Bearer {token}"),)
    deadline = time.monotonic() + REVOCATION_DEADLINE
    for spec in SERVICES:
        method = next(
            m for s in services_of_package(spec.package) for m in s.methods if not policy_of(m).public
        )
        path = f"/{method.containing_service.full_name}/{method.name}"
        with calls.channel(mesh.address(spec.name)) as channel:
            while True:
                outcome = calls.unary(channel, path, b"", metadata, CALL_TIMEOUT)
                if outcome.code is grpc.StatusCode.UNAUTHENTICATED:
                    break
                assert time.monotonic() < deadline, f"{spec.name} still accepts a revoked token: {outcome}"
                time.sleep(0.1)


@pytest.fixture(scope="module")
def credentials(fuzz_mesh: Mesh) -> Iterator[Credentials]:
    with credentials_for(fuzz_mesh) as made:
        _wait_until_refused(fuzz_mesh, made.forged["revoked"])
        yield made


@pytest.fixture(scope="module")
def health_watches(fuzz_mesh: Mesh) -> Iterator[dict[str, calls.Watch]]:
    """A health watch on each service, on channels of their own, for the whole run."""
    own = {s.name: grpc.insecure_channel(fuzz_mesh.address(s.name)) for s in SERVICES}
    watches = {name: calls.Watch(channel, label=name) for name, channel in own.items()}
    yield watches
    for watch in watches.values():
        watch.close()
    for channel in own.values():
        channel.close()
