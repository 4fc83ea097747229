"""The fuzz suite: every RPC of every service, fed hostile probes, through the edge and directly.

Each RPC in the contracts (every ``bhiv.*`` service in the generated descriptors, plus gRPC health)
is one test, so an RPC added later is fuzzed without a change here. A probe is a call with a
descriptor-generated, inflated or garbage body, one of each role's token, no token, a forged one
or an oddly written one, and hostile extra headers, sent to the edge, to the service that owns the
RPC, or to one that does not (see :mod:`tests.fuzz.strategies`). Probes are what a conforming
HTTP/2 client may send: no connection-specific header field, which makes a request malformed
HTTP/2 and can only be answered by a stream reset (:func:`tests.fuzz.strategies.conforming`).
Every probe must get:

- a clean answer: never INTERNAL, UNKNOWN, DATA_LOSS or UNAVAILABLE (the mesh is up: that is a
  broken stream or connection), never CANCELLED unless the fuzzer cut the stream, and a unary call
  answered within :data:`UNARY_TIMEOUT`;
- a response within the limits: each message within the message limit, and its headers, trailers
  and status message within :data:`MAX_RESPONSE_METADATA_BYTES`, what a gRPC client accepts by
  default;
- no way past authentication: without a token, or with a forged one, an RPC that needs a
  permission answers UNAUTHENTICATED (or RESOURCE_EXHAUSTED for a request over a limit; the edge may
  refuse hostile headers with INVALID_ARGUMENT);
- no harm to others: a health watch open on the same client connection stays open.

Each kind of failure is its own exception class, so Hypothesis shrinks and reports one smallest
probe per kind (RPC, target, credentials, headers, body hex). After the probes, every service must
have stayed SERVING throughout, the audit chain must verify, the default audit page must fit the
message limit, and no service may have logged an error.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, seed

from bhiv.sentinel.v1 import audit_service_pb2 as audit
from bhiv.sentinel.v1 import audit_service_pb2_grpc as audit_grpc
from bhiv_core.mesh import Mesh
from bhiv_core.registry import SERVICES
from bhiv_core.runtime.contracts import all_services, method_path, policy_of
from tests.e2e.client import CALL_TIMEOUT
from tests.fuzz import calls
from tests.fuzz.credentials import Credentials
from tests.fuzz.profile import FuzzProfile
from tests.fuzz.strategies import Budget, Probe, probes

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

UNARY_TIMEOUT = CALL_TIMEOUT
"""Seconds a unary probe may take; a request that blocks a service longer is a failure."""

STREAM_DEADLINE = 10.0
STREAM_MESSAGES = 3
STREAM_PATIENCE = 0.5
"""A server stream is read for at most 3 messages, and cut once quiet for half a second."""

STREAM_PATIENCE_REFUSED = STREAM_DEADLINE
"""How long a stream that must be refused (no valid credentials) is given to say so."""

MAX_RESPONSE_METADATA_BYTES = 8 * 1024
"""gRPC's default ``grpc.max_metadata_size``: a client with default settings fails above it."""

UNCLEAN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
}

SPENDS_TOKEN = {"/bhiv.identity.v1.AuthService/Logout"}
"""RPCs that revoke the token they are called with: they get a new session's token."""

PROBES_MADE: Counter[str] = Counter()
"""Probes sent to the mesh in this run, by RPC (replays of a remembered probe not counted)."""


@dataclass(frozen=True)
class Rpc:
    """One RPC to fuzz: its descriptor, the services that serve it, and whether it is public."""

    method: MethodDescriptor
    owners: tuple[str, ...]
    public: bool

    @property
    def path(self) -> str:
        return method_path(self.method)

    @property
    def id(self) -> str:
        return self.path.lstrip("/")


def _rpcs() -> list[Rpc]:
    by_package = {s.package: s.name for s in SERVICES}
    found = [
        Rpc(m, (by_package[s.file.package],), policy_of(m).public)
        for s in all_services()
        if s.file.package in by_package
        for m in s.methods
    ]
    # Every service serves health itself; through the edge, the name asked about picks the service.
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    found += [Rpc(m, tuple(by_package.values()), True) for m in health.methods]
    return found


RPCS = _rpcs()


class FuzzFailure(AssertionError):
    """A probe got an answer the platform must never give."""


_FAILURES: dict[str, type[FuzzFailure]] = {}


def failure(kind: str) -> type[FuzzFailure]:
    """The exception class of one kind of failure: Hypothesis shrinks and reports each kind apart."""
    if kind not in _FAILURES:
        _FAILURES[kind] = type(kind, (FuzzFailure,), {"__module__": __name__})
    return _FAILURES[kind]


def guarded(rpc: Rpc, probe: Probe) -> bool:
    """True when the probe reaches a service that serves the RPC, and the RPC needs a permission."""
    return not rpc.public and (probe.target == "edge" or probe.target in rpc.owners)


def judge(rpc: Rpc, probe: Probe, outcome: calls.Outcome, limit: int) -> list[tuple[str, str]]:
    """Every rule the answer to ``probe`` breaks, as (kind, explanation)."""
    problems: list[tuple[str, str]] = []
    code = outcome.code
    where = "edge" if probe.target == "edge" else "service"
    if code in UNCLEAN or (code is grpc.StatusCode.CANCELLED and not outcome.cut):
        # Told apart: a status the server sent, a stream or connection the peer dropped (the
        # client makes up the status), and the edge's own answer that its upstream went away.
        if outcome.details.startswith("Stream removed"):
            problems.append(
                (f"{code.name}_stream_removed_by_{where}", f"{code.name}: the {where} dropped the call")
            )
        elif outcome.details.startswith("upstream connect error"):
            problems.append(
                (f"{code.name}_upstream_reset_at_edge", f"{code.name}: the edge lost the service")
            )
        else:
            problems.append((f"{code.name}_from_{where}", f"{code.name} from the {where}"))
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED and not rpc.method.server_streaming:
        problems.append((f"NoAnswer_from_{where}", f"no answer from the {where} in {UNARY_TIMEOUT:g} s"))
    if any(size > limit for size in outcome.message_sizes):
        problems.append(
            (
                "ResponseOverLimit",
                f"a response of {max(outcome.message_sizes)} bytes, over the {limit}-byte limit",
            )
        )
    if outcome.metadata_bytes > MAX_RESPONSE_METADATA_BYTES:
        problems.append(
            (
                "ResponseMetadataOverLimit",
                f"{outcome.metadata_bytes} bytes of response metadata (headers, trailers, status message), "
                f"over the {MAX_RESPONSE_METADATA_BYTES} a default gRPC client accepts",
            )
        )
    if not problems and guarded(rpc, probe) and probe.credential.invalid:
        allowed = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
        if probe.target == "edge" and probe.headers:
            allowed.add(grpc.StatusCode.INVALID_ARGUMENT)
        if code not in allowed:
            problems.append(
                (
                    "CredentialsNotRefused",
                    f"{probe.credential!r} on an RPC that needs a permission got {code.name}, "
                    "not UNAUTHENTICATED",
                )
            )
    return problems


def _shown(value: str | bytes, width: int = 48) -> str:
    text = repr(value[:width]) + ("…" if len(value) > width else "")
    return f"{text} ({len(value)} chars)" if len(value) > width else text


def _metadata_text(metadata: Sequence[tuple[str, str | bytes]], shown: int = 6) -> str:
    parts = [f"{key}: {_shown(value)}" for key, value in metadata[:shown]]
    if len(metadata) > shown:
        parts.append(f"… {len(metadata)} headers in all")
    return "; ".join(parts) or "none"


def report(
    rpc: Rpc,
    probe: Probe,
    metadata: Sequence[tuple[str, str | bytes]],
    outcome: calls.Outcome,
    what: str,
    replay: str,
) -> str:
    """A failing probe, readably: what went wrong, the call, and how to replay it."""
    sizes = outcome.message_sizes
    streaming = " (server streaming)" if rpc.method.server_streaming else ""
    lines = [
        what,
        f"  rpc:         {rpc.path}{streaming}, to {probe.target}",
        f"  answer:      {outcome.code.name}: {outcome.details[:300]!r}",
        f"  response:    {len(sizes)} message(s){f' of up to {max(sizes)} bytes' if sizes else ''}, "
        f"{outcome.metadata_bytes} bytes of metadata, in {outcome.seconds:.3f} s",
        f"  credentials: {probe.credential!r}",
        f"  headers:     {_metadata_text(metadata)}",
        f"  body:        {probe.body.kind}, {probe.body.size} bytes: {probe.body.hex()}",
    ]
    if probe.body.text:
        lines.append(f"  as text:     {{{probe.body.text}}}")
    lines.append(f"  replay:      {replay}")
    return "\n".join(lines)


def message_limit(mesh: Mesh) -> int:
    """The services' message limit (``BHIV_MAX_MESSAGE_BYTES``)."""
    return max(c.max_message_bytes for c in mesh.configs.values())


def _probe_key(probe: Probe) -> tuple[object, ...]:
    """What identifies a probe, small enough to remember every probe of a round."""
    digest = hashlib.sha256()
    for chunk in probe.body.chunks:
        digest.update(len(chunk.data).to_bytes(8, "big") + chunk.data + chunk.times.to_bytes(8, "big"))
    return (probe.target, probe.credential, probe.headers, digest.digest())


@dataclass
class Allowance:
    """Seconds of shrinking left for the whole run, shared by every RPC's rounds."""

    seconds: float

    def spend(self, seconds: float) -> None:
        self.seconds -= seconds


class Round:
    """One Hypothesis run over an RPC, with its calls remembered and its shrinking bounded.

    Every probe's verdict is remembered, so Hypothesis' replay of a failing probe gets the same
    failure without another call (a real mesh is not deterministic, and replays cost calls).
    Shrinking is bounded: after the generation phase (``max_examples`` calls), at most
    ``shrink_calls`` more calls or ``shrink_seconds`` are made, and none once the run's
    :class:`Allowance` is spent; probes after that count as passing, so Hypothesis stops shrinking
    and reports the smallest failing probe found so far (a broken build still finishes in minutes).
    """

    def __init__(self, examples: int, shrink_calls: int, shrink_seconds: float, allowance: Allowance):
        self.examples = examples
        self.shrink_calls = shrink_calls
        self.shrink_seconds = shrink_seconds
        self.allowance = allowance
        self.calls = 0
        self.shrink_started: float | None = None
        self.last_check = 0.0
        self.verdicts: dict[tuple[object, ...], FuzzFailure | None] = {}

    def over_budget(self) -> bool:
        """True once shrinking has used its calls or its time, or the run's allowance is spent."""
        if self.calls < self.examples:
            return False
        now = time.monotonic()
        if self.shrink_started is None:
            self.shrink_started = now
        else:
            self.allowance.spend(now - self.last_check)
        self.last_check = now
        return (
            self.calls - self.examples >= self.shrink_calls
            or now - self.shrink_started >= self.shrink_seconds
            or self.allowance.seconds <= 0
        )


@pytest.fixture(scope="module")
def shrink_allowance(fuzz_profile: FuzzProfile) -> Allowance:
    return Allowance(fuzz_profile.shrink_total_seconds)


def _plain(error: BaseException) -> BaseException:
    """``error`` again, with Hypothesis' notes (the falsifying example) but without its traceback."""
    plain = type(error)(*error.args)
    for note in getattr(error, "__notes__", ()):
        plain.add_note(note)
    return plain


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.id)
def test_rpc_answers_every_probe_cleanly(
    rpc: Rpc,
    fuzz_mesh: Mesh,
    fuzz_profile: FuzzProfile,
    credentials: Credentials,
    channels: dict[str, grpc.Channel],
    health_watches: dict[str, calls.Watch],
    seconds_per_rpc: float,
    shrink_allowance: Allowance,
) -> None:
    limit = message_limit(fuzz_mesh)
    budget = Budget(fuzz_profile.max_body_bytes or limit - 1024, limit)
    others = [s.name for s in SERVICES if s.name not in rpc.owners]
    strategy = probes(rpc.method.input_type, rpc.owners, others, budget)
    spend = rpc.path in SPENDS_TOKEN
    bystanders = calls.Bystanders(channels)
    settings = fuzz_profile.settings(len(RPCS))
    current = Round(
        settings.max_examples, fuzz_profile.shrink_calls, fuzz_profile.shrink_seconds, shrink_allowance
    )
    round_seed = fuzz_profile.seed

    def call(probe: Probe) -> FuzzFailure | None:
        current.calls += 1
        PROBES_MADE[rpc.path] += 1
        metadata = [
            *credentials.metadata(probe.credential, spend=spend),
            *(pair for header in probe.headers for pair in header.render()),
        ]
        channel = channels[probe.target]
        bystanders.ready(probe.target)
        body = probe.body.render()
        if rpc.method.server_streaming:
            refused = guarded(rpc, probe) and probe.credential.invalid
            outcome = calls.server_stream(
                channel,
                rpc.path,
                body,
                metadata,
                deadline=STREAM_DEADLINE,
                patience=STREAM_PATIENCE_REFUSED if refused else STREAM_PATIENCE,
                max_messages=STREAM_MESSAGES,
            )
        else:
            outcome = calls.unary(channel, rpc.path, body, metadata, UNARY_TIMEOUT)
        problems = judge(rpc, probe, outcome, limit)
        connection_failed = outcome.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
        ended = bystanders.broken(probe.target, wait=1.0 if connection_failed else 0.0)
        if ended is not None:
            problems.append(("OtherStreamEnded", f"a health watch on the same connection ended: {ended}"))
        if not problems:
            return None
        kind, what = problems[0]
        replay = fuzz_profile.reproduce(round_seed, rpc.id)
        return failure(kind)(report(rpc, probe, metadata, outcome, what, replay))

    def probe_once(probe: Probe) -> None:
        key = _probe_key(probe)
        if key in current.verdicts:
            verdict = current.verdicts[key]
        elif current.over_budget():
            verdict = None
        else:
            verdict = current.verdicts[key] = call(probe)
        if verdict is not None:
            # One raise for first runs and replays alike: Hypothesis tells failures apart by the
            # exception's type and the line that raised it.
            raise type(verdict)(*verdict.args)

    # Rounds until the RPC's share of the run is spent (one round under the ci profile); each kind
    # of failure is reported once, from the first round that found it.
    stop = time.monotonic() + seconds_per_rpc
    found: dict[type[BaseException], BaseException] = {}
    try:
        while True:
            current = Round(
                settings.max_examples,
                fuzz_profile.shrink_calls,
                fuzz_profile.shrink_seconds,
                shrink_allowance,
            )
            try:
                seed(round_seed)(settings(given(strategy)(probe_once)))()
            except (FuzzFailure, BaseExceptionGroup) as error:
                for leaf in _leaves(error):
                    if not isinstance(leaf, FuzzFailure):
                        raise
                    found.setdefault(type(leaf), leaf)
            if time.monotonic() >= stop:
                break
            round_seed += 1
    finally:
        bystanders.close()
    errors = [_plain(error) for error in found.values()]
    __tracebackhide__ = True  # the report says it all; the frames are Hypothesis' and this test's
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"{rpc.id}: {len(errors)} kinds of failure", errors)


def test_every_service_stayed_serving_through_the_fuzz(
    fuzz_mesh: Mesh, health_watches: dict[str, calls.Watch]
) -> None:
    problems = []
    for name, watch in health_watches.items():
        if watch.not_serving:
            problems.append(f"{name} reported {', '.join(watch.not_serving)} ({len(watch.statuses)} updates)")
        if watch.ended is not None:
            problems.append(f"{name}'s health watch ended: {watch.ended}")
        with grpc.insecure_channel(fuzz_mesh.address(name)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(
                f"{name} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)} now"
            )
    assert problems == []


def test_the_audit_chain_verifies_after_the_fuzz(fuzz_mesh: Mesh, credentials: Credentials) -> None:
    # A new session: the fuzzer may have spent or revoked the admin's earlier tokens.
    metadata = (("authorization", f"Bearer {credentials.login('admin').tokens.access_token}"),)
    with calls.channel(fuzz_mesh.edge_address) as channel:
        reply = audit_grpc.AuditServiceStub(channel).VerifyAuditChain(
            audit.VerifyAuditChainRequest(), metadata=metadata, timeout=CALL_TIMEOUT
        )
    assert reply.ok, reply


def test_the_default_audit_page_fits_the_message_limit_after_the_fuzz(
    fuzz_mesh: Mesh, credentials: Credentials
) -> None:
    metadata = (("authorization", f"Bearer {credentials.login('admin').tokens.access_token}"),)
    body = audit.ListAuditRecordsRequest().SerializeToString()
    with calls.channel(fuzz_mesh.edge_address) as channel:
        outcome = calls.unary(
            channel, "/bhiv.sentinel.v1.AuditService/ListAuditRecords", body, metadata, CALL_TIMEOUT
        )
    assert (outcome.code, outcome.details) == (grpc.StatusCode.OK, "")
    assert outcome.message_sizes[0] <= message_limit(fuzz_mesh)


def _error_kind(entry: dict[str, object]) -> str:
    """An error line's kind: who logged what, and the exception's last line, without RPC paths."""
    text = str(entry.get("msg", ""))
    exc = str(entry.get("exc", "")).strip()
    if exc:
        text += f" [{exc.splitlines()[-1][:160]}]"
    text = re.sub(r"type '[\w.]+'", "type '<message>'", re.sub(r"/[\w.]+/\w+", "<rpc>", text))
    return f"{entry.get('service')} {entry.get('logger')}: {text}"


_STDERR_ERROR = re.compile(r"^([EF]\d{4} |Traceback|\w+(Error|Exception)\b|Fatal|Segmentation)")
"""What a service's stderr shows when something went wrong (gRPC's own I and W lines are fine)."""

GRPC_CORE_REFUSAL_NOTE = re.compile(
    r"^E\d{4} [\d:.]+ +\d+ hpack_encoder\.cc:\d+\] Ignoring key value pair due to size limit\."
)
"""The one ERROR line of gRPC's own that is not a failure: a service's gRPC transport refuses request
headers over its ``grpc.max_metadata_size`` with RESOURCE_EXHAUSTED (only a direct caller can send
them: the edge refuses them first) and writes a status message listing every field, which its own
encoder then finds too long, drops and logs. The caller gets RESOURCE_EXHAUSTED (without a message);
none of this runs our code, and no setting of grpc's turns it off."""


def test_no_service_logged_an_error_during_the_fuzz(fuzz_mesh: Mesh) -> None:
    errors: dict[str, int] = {}
    for path in sorted(fuzz_mesh.log_dir.glob("*.log*")):
        if path.name.startswith(("envoy", "edge-access")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                # What a service printed outside its JSON log (a crash, gRPC's own errors).
                if not _STDERR_ERROR.match(line) or GRPC_CORE_REFUSAL_NOTE.match(line):
                    continue
                kind = f"{path.name}: {line[:200]}"
            else:
                if entry.get("level") not in ("error", "critical"):
                    continue
                kind = _error_kind(entry)
            errors[kind] = errors.get(kind, 0) + 1
    assert not errors, "\n".join(f"{count:6d} times: {kind}" for kind, count in sorted(errors.items()))
