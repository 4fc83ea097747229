"""Screens the text fields of decoded requests for injection payloads and reports only the matches.

gRPC carries a request's text in protobuf fields, not in URLs, so the edge's access log never sees
it: each service screens its own decoded requests, in process, with the threat detection agent's
:class:`~bhiv_core.agents.threat_detection.screening.Screener` (one Hyperscan pass per field form,
linear time in the input whatever it holds). The concern runs after validation (a refused request
is not screened) and before the handler. A request with up to :data:`INLINE_CHARS` of text is
screened inline, on the event loop, within a measured budget (``make bench`` compares the chain's
throughput with and without it; see the README's Benchmarks section). A larger one (up to the
request size limit: a 4 MiB field costs 8-50 ms to screen) goes to a bounded background queue that
one worker thread drains with its own screener (Hyperscan releases the GIL while it scans): the
call never waits for it, and when the queue holds :data:`QUEUE_CHARS` already, the request is
dropped from screening and counted, never blocked.

What is walked: every string field of the request, in nested messages, repeated fields and maps
(values and keys), at most :data:`MAX_FIELDS` of them, so the work is linear in the request's
size. What is never walked: a field the contracts mark ``debug_redact = true`` (passwords, refresh
and access tokens, secrets, credential URLs), nor anything under it; health and reflection;
requests streamed by the client; sentinel's ``ReportSecurityEvent`` (:data:`UNSCREENED_METHODS`).

What leaves the service: nothing, unless a rule matches. Then a :class:`ScreeningHit` (the method,
the client address the runtime trusts, the principal, and for each matched field its path and at
most :data:`EXCERPT_BYTES` of it ending where the rule matched) goes to the ``on_hit`` callback.
:func:`log_hit` (the default) logs it, rate-limited; :func:`report_to` hands it to sentinel as a
``SECURITY_EVENT_KIND_SUSPICIOUS_INPUT`` event through a
:class:`~bhiv_core.runtime.security_events.SecurityEventReporter` (the
shared reporter the chain owns), and sentinel screens the excerpts again and records the threat.
The callback must not block: it runs on the request's path. A failure inside screening is logged
and counted, never the caller's error.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from bhiv_core.agents.threat_detection.screening import Finding, Screener, shared_screener
from bhiv_core.interceptors.metrics import screening_outcomes
from bhiv_core.runtime.chain import CallInfo, Check, Context, PreCheckInterceptor, is_infrastructure
from bhiv_core.runtime.security_events import SecurityEvent, SecurityEventKind, SecurityEventReporter
from bhiv_core.security.address import client_address_of

__all__ = [
    "EXCERPT_BYTES",
    "INLINE_CHARS",
    "MAX_FIELDS",
    "MAX_REPORTED_FIELDS",
    "QUEUE_CHARS",
    "UNSCREENED_METHODS",
    "MatchedField",
    "ScreeningHit",
    "ScreeningInterceptor",
    "log_hit",
    "report_to",
    "screened_fields",
]

log = logging.getLogger(__name__)

MAX_FIELDS = 1000
"""String fields screened per request at most; the rest of a larger request is not screened."""

MAX_REPORTED_FIELDS = 16
"""Matched fields one hit carries at most (the contract's ``max_items`` on ``fields``)."""

EXCERPT_BYTES = 512
"""Bytes of a matched field reported at most, ending where the rule matched (``max_len`` 512)."""

UNSCREENED_METHODS = frozenset({"/bhiv.sentinel.v1.ThreatService/ReportSecurityEvent"})
"""Methods never screened: a report of suspicious input carries the payloads it reports, which
sentinel screens itself; screening it would report the report."""

INLINE_CHARS = 64 * 1024
"""Text per request screened inline at most (``BHIV_SCREENING_INLINE_CHARS``); more goes to the queue."""

QUEUE_CHARS = 16 * 1024 * 1024
"""Text waiting in the background queue at most (``BHIV_SCREENING_QUEUE_CHARS``); more is dropped."""

_MAX_PATH = 256
"""Characters of a field path reported at most (the contract's ``max_len`` on ``path``)."""

_MAX_KEY = 64
"""Characters of a map key shown in a path."""

_MAX_DEPTH = 32
"""Message nesting walked at most."""


@dataclass(frozen=True, slots=True)
class MatchedField:
    """One text field of a request that matched the rules.

    Attributes:
        path: The field's path in the request (``ticket.description``, ``customer.tags[1]``,
            ``labels[env]``; ``labels[env]#key`` for a map key), at most 256 characters.
        excerpt: At most :data:`EXCERPT_BYTES` of the field's matched form, ending at the match.
        rules: The ids of the rules that matched it.

    """

    path: str
    excerpt: str
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScreeningHit:
    """A request whose text fields matched the injection rules.

    Attributes:
        method: The full gRPC method.
        client_address: The client address the runtime trusts (the edge's word, or the peer).
        principal: The caller's subject; empty for a public RPC's anonymous caller.
        fields: The matched fields, at most :data:`MAX_REPORTED_FIELDS`.

    """

    method: str
    client_address: str
    principal: str
    fields: tuple[MatchedField, ...]

    def security_event(self) -> SecurityEvent:
        """The hit as the ``SUSPICIOUS_INPUT`` security event that tells sentinel about it."""
        rules = sorted({rule for field in self.fields for rule in field.rules})
        return SecurityEvent(
            SecurityEventKind.SUSPICIOUS_INPUT,
            self.client_address,
            self.principal[:256],
            self.method[:256],
            f"the service's screening matched {', '.join(rules)}"[:2000],
            fields=tuple((f.path, f.excerpt) for f in self.fields),
        )


OnHit = Callable[[ScreeningHit], None]
"""What receives each hit; called on the request's path, so it must not block."""


_last_log = float("-inf")
_suppressed = 0


def log_hit(hit: ScreeningHit) -> None:
    """The default ``on_hit``: one WARNING per second at most (the others counted), no excerpts."""
    global _last_log, _suppressed
    now = time.monotonic()
    if now - _last_log < 1.0:
        _suppressed += 1
        return
    _last_log, suppressed, _suppressed = now, _suppressed, 0
    log.warning(
        "suspicious input",
        extra={
            "method": hit.method,
            "client_address": hit.client_address,
            "principal": hit.principal,
            "fields": [f.path for f in hit.fields],
            "rules": sorted({rule for f in hit.fields for rule in f.rules}),
            "suppressed": suppressed,
        },
    )


def report_to(reporter: SecurityEventReporter) -> OnHit:
    """An ``on_hit`` that logs each hit and sends it to sentinel through ``reporter``."""

    def on_hit(hit: ScreeningHit) -> None:
        log_hit(hit)
        reporter.report(hit.security_event())

    return on_hit


# --- Walking a request ------------------------------------------------------------------------

_STRING, _MESSAGE, _MAP = range(3)


@dataclass(slots=True)
class _Step:
    """How one field of a message type is walked (read from the descriptor once)."""

    name: str
    kind: int
    repeated: bool
    nested: _Plan | None = None
    key_is_string: bool = False
    value_kind: int = _STRING


@dataclass(slots=True)
class _Plan:
    """The fields of one message type that may hold text, by field number."""

    steps: dict[int, _Step]


_plans: dict[str, _Plan | None] = {}


def _is_secret(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().debug_redact)


def _plan(descriptor: Descriptor) -> _Plan | None:
    """The walk of ``descriptor``'s type, or None when no text can sit under it (cached per type)."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
    plan = _Plan({})
    _plans[name] = plan  # before recursing: a recursive type finds the plan being built
    for field in descriptor.fields:
        if _is_secret(field):
            continue
        step: _Step | None = None
        message = field.message_type
        if field.type == FieldDescriptor.TYPE_STRING:
            step = _Step(field.name, _STRING, bool(field.is_repeated))
        elif message is not None and message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            nested, value_kind = None, -1
            if value.message_type is not None and not _is_secret(value):
                nested = _plan(value.message_type)
                value_kind = _MESSAGE if nested is not None else -1
            elif value.type == FieldDescriptor.TYPE_STRING and not _is_secret(value):
                value_kind = _STRING
            key_is_string = key.type == FieldDescriptor.TYPE_STRING
            if key_is_string or value_kind != -1:
                step = _Step(field.name, _MAP, True, nested, key_is_string, value_kind)
        elif message is not None:
            nested = _plan(message)
            if nested is not None:
                step = _Step(field.name, _MESSAGE, bool(field.is_repeated), nested)
        if step is not None:
            plan.steps[field.number] = step
    if not plan.steps:
        # Nothing to read (Timestamp, Duration, a message of numbers): never walked.
        _plans[name] = None
        return None
    return plan


def screened_fields(
    message: Any, plan: _Plan | None = None, limit: int = MAX_FIELDS
) -> list[tuple[str, str]]:
    """The ``(path, text)`` pairs of ``message`` that screening reads, in field order.

    Non-empty strings of every field but those marked ``debug_redact`` (and nothing under those),
    through nested messages, repeated fields and maps (values, and keys as ``name[key]#key``), at
    most ``limit`` of them and at most 32 messages deep: linear in the message's size.
    """
    found: list[tuple[str, str]] = []
    if plan is None:
        plan = _plan(message.DESCRIPTOR)
        if plan is None:
            return found

    def walk(msg: Any, plan: _Plan, prefix: str, depth: int) -> None:
        steps = plan.steps
        for field, value in msg.ListFields():
            step = steps.get(field.number)
            if step is None:
                continue
            path = prefix + step.name
            if step.kind == _STRING:
                if step.repeated:
                    for i, item in enumerate(value):
                        if len(found) >= limit:
                            return
                        if item:
                            found.append((f"{path}[{i}]", item))
                elif len(found) < limit:
                    found.append((path, value))
            elif step.kind == _MESSAGE:
                if depth >= _MAX_DEPTH or step.nested is None:
                    continue
                if step.repeated:
                    for i, item in enumerate(value):
                        walk(item, step.nested, f"{path}[{i}].", depth + 1)
                else:
                    walk(value, step.nested, path + ".", depth + 1)
            else:
                for key, item in value.items():
                    if len(found) >= limit:
                        return
                    shown = f"{path}[{str(key)[:_MAX_KEY]}]"
                    if step.key_is_string and key:
                        found.append((shown + "#key", key))
                    if step.value_kind == _STRING and item and len(found) < limit:
                        found.append((shown, item))
                    elif step.value_kind == _MESSAGE and step.nested is not None and depth < _MAX_DEPTH:
                        walk(item, step.nested, shown + ".", depth + 1)
            if len(found) >= limit:
                return

    walk(message, plan, "", 0)
    return found


# --- The concern -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Caller:
    """What a hit says about its call, read on the request's path (the call is gone later)."""

    method: str
    client_address: str
    principal: str

    @staticmethod
    def of(call: CallInfo) -> _Caller:
        principal = call.principal
        return _Caller(
            call.method,
            client_address_of(call.headers, call.peer),
            str(getattr(principal, "subject", "") or ""),
        )

    def hit(self, findings: list[Finding]) -> ScreeningHit:
        # One excerpt per field: the longest context, which for a field shorter than the excerpt
        # limit ends at its last match and so holds every match (sentinel screens it again).
        excerpts: dict[str, str] = {}
        rules: dict[str, list[str]] = {}
        for finding in findings:
            path = finding.field[:_MAX_PATH]
            context = finding.context or finding.excerpt
            if len(context) > len(excerpts.get(path, "")):
                excerpts[path] = context
            rules.setdefault(path, []).append(finding.rule.id)
        fields = tuple(
            MatchedField(path, excerpt, tuple(rules[path]))
            for path, excerpt in list(excerpts.items())[:MAX_REPORTED_FIELDS]
        )
        return ScreeningHit(self.method, self.client_address, self.principal, fields)


_STOP = None


class _Backlog:
    """The bounded background queue of large requests, drained by one worker thread.

    :meth:`submit` never waits: it refuses (and the caller counts a drop) when the text waiting
    would pass ``limit`` characters. Hits go back to the event loop that submitted them.
    """

    def __init__(self, limit: int, screener: Callable[[], Screener]):
        self._limit = limit
        self._screener = screener
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self.failures = 0

    def submit(
        self,
        caller: _Caller,
        fields: list[tuple[str, str]],
        size: int,
        deliver: Callable[[ScreeningHit], None],
    ) -> bool:
        with self._lock:
            if self._waiting + size > self._limit:
                return False
            self._waiting += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="screening", daemon=True)
                self._thread.start()
        self._queue.put((caller, fields, size, deliver, asyncio.get_running_loop()))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stops the worker after what is queued (waits at most ``timeout`` seconds)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        screener = self._screener()  # compiled in this thread: a screener is not thread-safe
        while (item := self._queue.get()) is not _STOP:
            caller, fields, size, deliver, loop = item
            try:
                findings = screener.screen_fields(fields, context=EXCERPT_BYTES)
                if findings:
                    loop.call_soon_threadsafe(deliver, caller.hit(findings))
            except Exception:  # the loop closed, or a screening failure: logged, never fatal
                self.failures += 1
                log.exception("background screening failed", extra={"method": caller.method})
            finally:
                with self._lock:
                    self._waiting -= size


class ScreeningInterceptor(PreCheckInterceptor):
    """Screens each decoded request's text fields; hands a :class:`ScreeningHit` to ``on_hit``.

    Never refuses a call: screening detects, sentinel decides. Place it after validation
    (:func:`~bhiv_core.runtime.chain.chain_order` does), where the request is decoded.

    Args:
        screener: The rules, compiled; by default this thread's :func:`shared_screener` (a
            screener is not thread-safe: one per event loop thread).
        on_hit: Receives every hit (default :func:`log_hit`) on the event loop; must not block.
        inline_chars: Requests with at most this much text are screened inline.
        queue_chars: Text the background queue holds at most; a larger request beyond it is
            not screened (counted in ``dropped``).
        service: The service's name, labelling ``bhiv_screening_requests_total`` (hits, deferred,
            dropped and failed requests; clean inline screenings are not counted).

    Attributes:
        screened: Requests screened inline.
        deferred: Requests handed to the background queue.
        dropped: Requests not screened because the queue was full.
        hits: Requests with at least one match.
        failures: Requests whose screening raised (logged; the call went on).

    """

    def __init__(
        self,
        screener: Screener | None = None,
        on_hit: OnHit = log_hit,
        *,
        inline_chars: int = INLINE_CHARS,
        queue_chars: int = QUEUE_CHARS,
        service: str = "",
    ):
        self._screener = screener if screener is not None else shared_screener()
        self._on_hit = on_hit
        self._inline = inline_chars
        self._backlog = _Backlog(queue_chars, Screener)
        self._last_drop_log = float("-inf")
        self._counted = {
            outcome: screening_outcomes.labels(service or "unknown", outcome)
            for outcome in ("hit", "deferred", "dropped", "failed")
        }
        self.screened = 0
        self.deferred = 0
        self.dropped = 0
        self.hits = 0
        self.failures = 0

    @property
    def background_failures(self) -> int:
        """Requests whose background screening raised."""
        return self._backlog.failures

    def close(self) -> None:
        """Stops the background worker (after what is queued, for at most 2 s)."""
        self._backlog.close()

    def _deliver(self, hit: ScreeningHit) -> None:
        self.hits += 1
        self._counted["hit"].inc()
        self._on_hit(hit)

    def _drop(self, method: str) -> None:
        self.dropped += 1
        self._counted["dropped"].inc()
        now = time.monotonic()
        if now - self._last_drop_log >= 60:
            self._last_drop_log = now
            log.warning(
                "screening is behind: large requests not screened",
                extra={"method": method, "dropped": self.dropped},
            )

    def bind(self, method: str, descriptor: MethodDescriptor | None) -> Check | None:
        """The check of ``method``: None for health, reflection and requests without text."""
        if (
            descriptor is None
            or is_infrastructure(method)
            or method in UNSCREENED_METHODS
            or descriptor.client_streaming
        ):
            return None
        plan = _plan(descriptor.input_type)
        if plan is None:
            return None
        screen = self._screener.screen_fields
        inline = self._inline

        def check(call: CallInfo, request: Any, context: Context) -> None:
            try:
                fields = screened_fields(request, plan)
                if not fields:
                    return
                size = sum(len(text) for _, text in fields)
                if size > inline:
                    if self._backlog.submit(_Caller.of(call), fields, size, self._deliver):
                        self.deferred += 1
                        self._counted["deferred"].inc()
                    else:
                        self._drop(method)
                    return
                self.screened += 1
                findings = screen(fields, context=EXCERPT_BYTES)
                if findings:
                    self._deliver(_Caller.of(call).hit(findings))
            except Exception:
                self.failures += 1
                self._counted["failed"].inc()
                log.exception("screening failed", extra={"method": method})

        return check

    async def check(self, call: CallInfo, request: Any, context: Context) -> None:
        """Screens one call (the chain uses :meth:`bind` instead)."""
        bound = self.bind(call.method, call.descriptor)
        if bound is not None:
            bound(call, request, context)
