"""How an alert leaves sentinel: a bounded HTTP POST, an e-mail through the relay, the signature.

Outbound traffic goes only where an admin configured it: to the channel's own URL or to the
configured SMTP relay. Webhooks go through the shared SSRF-safe client
(:mod:`bhiv_core.outbound.http`) with a policy of the channel's host alone: redirects are not
followed, proxies from the environment are not used, cloud metadata addresses are never reached,
``seconds`` bound the connect and twice that the attempt, and at most :data:`MAX_RESPONSE_BYTES`
of the answer are read. E-mail runs ``smtplib`` on a worker thread, off the event loop.

The generic webhook's signature (for receivers):

``X-BHIV-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>." + raw body)>``

A receiver recomputes ``v1`` over the timestamp and the raw body bytes with the channel's secret,
compares in constant time, and refuses a ``t`` more than five minutes from its clock, so a
captured request cannot be replayed later (:mod:`bhiv_core.outbound.signatures`, shared with
integrations' webhooks, holds the scheme and its reference verifier). Each alert
carries ``X-BHIV-Alert: alerts/{id}``, the same on every retry, for receivers to drop duplicates.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import urlsplit

from bhiv.sentinel.v1 import alert_pb2
from bhiv_core.outbound.http import OutboundClient, OutboundError, OutboundPolicy, OutboundTimeout
from bhiv_core.services.sentinel.alerts.config import SmtpRelay

__all__ = [
    "MAX_RESPONSE_BYTES",
    "REDACTED",
    "DeliveryError",
    "post_json",
    "redact_target",
    "send_mail",
    "target_problem",
]

MAX_RESPONSE_BYTES = 64 * 1024
"""The most bytes of a webhook's response read (the status is what counts)."""
REDACTED = "[redacted]"
"""What replaces the path of a webhook URL on every read; never valid in a URL a client sends."""

Kind = alert_pb2.AlertChannelKind
_WEBHOOKS = (alert_pb2.ALERT_CHANNEL_KIND_SLACK_WEBHOOK, alert_pb2.ALERT_CHANNEL_KIND_GENERIC_WEBHOOK)
# Linear-time (no nested quantifiers over overlapping classes); CR/LF can never pass.
_EMAIL = re.compile(r"[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,16}")


class DeliveryError(Exception):
    """One delivery attempt failed; the message is safe to store and show (no secrets)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def target_problem(kind: Kind.ValueType, target: str) -> str | None:
    """Why ``target`` does not fit a channel of ``kind``, or None when it does.

    Slack webhooks are ``https://`` URLs (plain ``http://`` only to a loopback address, as for a
    local sink); generic webhooks ``http://`` or ``https://``; e-mail channels one address.
    """
    if kind == alert_pb2.ALERT_CHANNEL_KIND_EMAIL:
        return None if _EMAIL.fullmatch(target) else "must be one e-mail address"
    if REDACTED in target:
        return "is the redacted form: send the whole URL, or leave target out of the update"
    if any(c.isspace() or ord(c) < 0x20 for c in target):
        return "must be a URL without spaces or control characters"
    try:
        url = urlsplit(target)
        host, port = url.hostname, url.port
    except ValueError:
        return "must be a URL"
    if not host or url.scheme not in ("http", "https") or port == 0:
        return "must be an http:// or https:// URL with a host"
    if kind == alert_pb2.ALERT_CHANNEL_KIND_SLACK_WEBHOOK and url.scheme != "https" and not _loopback(host):
        return "must be an https:// URL (http:// only to a loopback address)"
    return None


def redact_target(kind: Kind.ValueType, target: str) -> str:
    """What reads show of a target: a webhook URL's scheme, host and port, its path redacted."""
    if kind not in _WEBHOOKS:
        return target
    url = urlsplit(target)
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}/{REDACTED}"


def _policy(url: str, seconds: float) -> OutboundPolicy:
    """Where one channel's POST may go: its own host, at any address but a cloud metadata endpoint.

    Channels are configured by admins and may name an internal receiver (a relay, a local sink),
    so internal addresses stay reachable; the metadata endpoints never are (no range covers them).
    """
    host = urlsplit(url).hostname or ""
    # A literal address target is matched by the ranges (which never cover metadata addresses).
    entries: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        entries = (host, *entries)
    return OutboundPolicy(entries, MAX_RESPONSE_BYTES, connect_timeout=seconds)


async def post_json(url: str, body: bytes, headers: dict[str, str], *, seconds: float) -> None:
    """POSTs ``body`` to ``url``; raises :class:`DeliveryError` unless it answers 2xx in time.

    Sent by the shared outbound client (:mod:`bhiv_core.outbound.http`): ``seconds`` to connect,
    twice that for the whole attempt. A 3xx is a failure: following a redirect would send the
    alert somewhere no admin configured.
    """
    headers = {"Content-Type": "application/json", "User-Agent": "bhiv-sentinel", **headers}
    try:
        client = OutboundClient(_policy(url, seconds))
        answer = await client.request("POST", url, headers=headers, body=body, timeout=seconds * 2)
    except OutboundTimeout:
        raise DeliveryError(f"no answer within {seconds * 2:g} s") from None
    except (OutboundError, ValueError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from None
    if not 200 <= answer.status < 300:
        raise DeliveryError(f"the endpoint answered HTTP {answer.status}")


def _send(relay: SmtpRelay, message: EmailMessage, timeout: float) -> None:
    assert relay.host is not None
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=timeout) as smtp:
            if relay.starttls:
                context = ssl.create_default_context(cafile=str(relay.ca_file) if relay.ca_file else None)
                smtp.starttls(context=context)  # refuses a relay without STARTTLS: no plain fallback
            if relay.username:
                smtp.login(relay.username, relay.password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}"[:500]) from None


async def send_mail(relay: SmtpRelay, to: str, subject: str, text: str, *, seconds: float) -> None:
    """Sends a plain-text e-mail through the relay; raises :class:`DeliveryError` when it refuses."""
    if relay.host is None:
        raise DeliveryError("no SMTP relay is configured (BHIV_ALERT_SMTP_HOST)")
    message = EmailMessage()
    message["From"] = relay.sender
    message["To"] = to
    # The summary may come from request data: one line, bounded, so it cannot inject headers.
    message["Subject"] = " ".join(subject.split())[:200]
    message.set_content(text)
    try:
        async with asyncio.timeout(seconds * 3):
            await asyncio.to_thread(_send, relay, message, seconds)
    except TimeoutError:
        raise DeliveryError(f"SMTP: no answer within {seconds * 3:g} s") from None
