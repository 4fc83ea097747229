"""The AlertService RPCs over sentinel's kit store (``bhiv.sentinel.v1.AlertService``).

Secrets are write-only. The stored channel message is already the redacted form every read
returns (webhook URLs as ``scheme://host:port/[redacted]``, no HMAC key, ``has_secret`` set), and
the real target and key live sealed beside it (:func:`~.delivery.sealed_record`), so Get, List,
Update and Create responses, idempotency receipts and the audit log (which keeps resource names
only) never see them. An idempotent create's request digest is taken over keyed fingerprints of
the target and the key, not the values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.sentinel.v1 import alert_pb2
from bhiv.sentinel.v1 import alert_service_pb2 as als
from bhiv_core.resources import (
    Cmp,
    Eq,
    Filter,
    ResourceStore,
    Transaction,
    check_etag,
    idempotent,
    list_page,
    time_range,
)
from bhiv_core.runtime.errors import Aborted, FieldViolation, InvalidArgument
from bhiv_core.security.principal import Principal
from bhiv_core.services.sentinel.alerts.delivery import AlertDispatcher, open_destination, sealed_record
from bhiv_core.services.sentinel.alerts.resources import ALERTS, CHANNEL, CHANNELS
from bhiv_core.services.sentinel.alerts.transports import redact_target, target_problem
from bhiv_core.storage.sealing import SecretBox

__all__ = ["AlertChannels"]

Channel = alert_pb2.AlertChannel
_GENERIC = alert_pb2.ALERT_CHANNEL_KIND_GENERIC_WEBHOOK
_SECRET_LENGTH = (16, 256)


def _check(channel: Channel, target: str, secret: str, *, prefix: str = "alert_channel") -> None:
    """INVALID_ARGUMENT unless the channel meets the rules of CreateAlertChannel."""
    out: list[FieldViolation] = []
    if not channel.display_name.strip():
        out.append(FieldViolation(f"{prefix}.display_name", "is required", "REQUIRED"))
    if channel.kind == alert_pb2.ALERT_CHANNEL_KIND_UNSPECIFIED:
        out.append(FieldViolation(f"{prefix}.kind", "is required", "REQUIRED"))
    if not target:
        out.append(FieldViolation(f"{prefix}.target", "is required", "REQUIRED"))
    elif channel.kind != alert_pb2.ALERT_CHANNEL_KIND_UNSPECIFIED:
        problem = target_problem(channel.kind, target)
        if problem:
            out.append(FieldViolation(f"{prefix}.target", f"{problem} for this kind", "TARGET_MISMATCH"))
    if secret and channel.kind != _GENERIC:
        out.append(
            FieldViolation(
                "secret", "only an ALERT_CHANNEL_KIND_GENERIC_WEBHOOK channel has a secret", "NOT_ALLOWED"
            )
        )
    elif secret and not _SECRET_LENGTH[0] <= len(secret) <= _SECRET_LENGTH[1]:
        out.append(FieldViolation("secret", "must be 16-256 characters", "BAD_LENGTH"))
    if out:
        raise InvalidArgument(violations=out)


def _redacted(channel: Channel, target: str, secret: str) -> Channel:
    channel.target = redact_target(channel.kind, target)
    channel.has_secret = bool(secret)
    return channel


class AlertChannels:
    """The AlertService operations.

    Args:
        store: Sentinel's kit store.
        box: Seals and opens channel secrets.
        dispatcher: Sends test alerts.
        clock: Unix seconds now.

    """

    def __init__(
        self,
        store: ResourceStore,
        box: SecretBox,
        dispatcher: AlertDispatcher,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._box = box
        self._dispatcher = dispatcher
        self._clock = clock

    async def create(
        self, request: als.CreateAlertChannelRequest, principal: Principal
    ) -> als.CreateAlertChannelResponse:
        """Creates a channel (its secrets sealed), once per ``request_id``."""
        given = request.alert_channel
        channel = CHANNEL.fresh(given, now=self._clock())
        channel.has_secret = False
        target, secret = given.target, request.secret
        _check(channel, target, secret)
        _redacted(channel, target, secret)

        async def insert(txn: Transaction) -> als.CreateAlertChannelResponse:
            await txn.insert(CHANNELS, sealed_record(channel, target, secret, self._box))
            return als.CreateAlertChannelResponse(alert_channel=channel)

        # The receipt's digest must not be a plain hash of the secrets: fingerprint them with a key.
        digested = als.CreateAlertChannelRequest()
        digested.CopyFrom(request)
        digested.alert_channel.target = self._box.fingerprint(target)
        digested.secret = self._box.fingerprint(secret) if secret else ""
        return await idempotent(
            self._store,
            scope=f"CreateAlertChannel:{principal.subject}",
            request_id=request.request_id,
            request=digested,
            response_type=als.CreateAlertChannelResponse,
            step=insert,
            clock=self._clock,
        )

    async def get(
        self, request: als.GetAlertChannelRequest, principal: Principal
    ) -> als.GetAlertChannelResponse:
        """The channel, redacted."""
        record = await CHANNEL.get(self._store, request.name, principal)
        return als.GetAlertChannelResponse(alert_channel=CHANNEL.load(record))

    async def list(
        self, request: als.ListAlertChannelsRequest, principal: Principal
    ) -> als.ListAlertChannelsResponse:
        """A page of channels by display name, redacted."""
        filters: list[Filter] = []
        if request.kind:
            filters.append(Eq("kind", int(request.kind)))
        if request.enabled_only:
            filters.append(Eq("enabled", True))
        records, token = await list_page(
            self._store,
            CHANNELS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListAlertChannels",),
        )
        response = als.ListAlertChannelsResponse(next_page_token=token)
        for record in records:
            response.alert_channels.add().MergeFromString(record.data)
        return response

    async def update(
        self, request: als.UpdateAlertChannelRequest, principal: Principal
    ) -> als.UpdateAlertChannelResponse:
        """Applies ``update_mask``; ``secret`` in the mask replaces (or, empty, removes) the key."""
        patch = request.alert_channel
        if not patch.name:
            raise InvalidArgument(
                violations=[FieldViolation("alert_channel.name", "is required", "REQUIRED")]
            )
        paths = list(request.update_mask.paths)
        fields = [(index, path) for index, path in enumerate(paths) if path != "secret"]
        now = self._clock()

        async def update(txn: Transaction) -> als.UpdateAlertChannelResponse:
            record = await CHANNEL.get(txn, patch.name, principal)
            check_etag(patch.etag, record, patch.name)
            current = open_destination(record, self._box)
            merged = CHANNEL.load(record)
            if fields or not paths:
                merged = _merge(merged, patch, fields)
            target = patch.target if "target" in paths else current.target
            secret = request.secret if "secret" in paths else current.secret
            # The whole result meets the create rules (a kept target must fit a changed kind).
            _check(merged, target, request.secret if "secret" in paths else "")
            if merged.kind != _GENERIC:
                secret = ""  # changing the kind away from the generic webhook removes its key
            _redacted(merged, target, secret)
            CHANNEL.stamp(merged, now=now)
            if not await txn.replace(
                CHANNELS, sealed_record(merged, target, secret, self._box), expected_etag=record.etag
            ):
                raise Aborted(
                    f"{patch.name} changed while this call ran: re-read it and retry",
                    reason="CONCURRENT_CHANGE",
                )
            return als.UpdateAlertChannelResponse(alert_channel=merged)

        return await self._store.run(update)

    async def delete(
        self, request: als.DeleteAlertChannelRequest, principal: Principal
    ) -> als.DeleteAlertChannelResponse:
        """Deletes the channel with its sealed secrets; its alerts stay listed."""

        async def delete(txn: Transaction) -> als.DeleteAlertChannelResponse:
            record = await CHANNEL.get(txn, request.name, principal)
            check_etag(request.etag, record, request.name)
            if not await txn.delete(CHANNELS, record.id, expected_etag=record.etag):
                raise Aborted(
                    f"{request.name} changed while this call ran: re-read it and retry",
                    reason="CONCURRENT_CHANGE",
                )
            return als.DeleteAlertChannelResponse()

        return await self._store.run(delete)

    async def send_test(
        self, request: als.SendTestAlertRequest, principal: Principal
    ) -> als.SendTestAlertResponse:
        """Sends a test alert and reports the outcome (a failure is data, not an error)."""
        alert, delivered = await self._dispatcher.send_test(request.name)
        return als.SendTestAlertResponse(
            delivered=delivered, attempts=alert.attempts, error=alert.error, alert=alert
        )

    async def list_alerts(
        self, request: als.ListAlertsRequest, principal: Principal
    ) -> als.ListAlertsResponse:
        """A page of alerts, newest first."""
        filters: list[Filter] = []
        if request.channel:
            filters.append(Eq("channel", request.channel))
        if request.incident:
            filters.append(Eq("incident", request.incident))
        if request.status:
            filters.append(Eq("status", int(request.status)))
        start, end = time_range(request)
        if start is not None:
            filters.append(Cmp("created", ">=", start))
        if end is not None:
            filters.append(Cmp("created", "<", end))
        records, token = await list_page(
            self._store,
            ALERTS,
            filters,
            page_size=request.page_size,
            page_token=request.page_token,
            query=("ListAlerts",),
        )
        response = als.ListAlertsResponse(next_page_token=token)
        for record in records:
            response.alerts.add().MergeFromString(record.data)
        return response


def _merge(current: Channel, patch: Channel, fields: list[tuple[int, str]]) -> Channel:
    """``CHANNEL.merge`` over the mask's paths other than ``secret``, violations at their own index."""
    try:
        return CHANNEL.merge(current, patch, FieldMask(paths=[path for _, path in fields]))
    except InvalidArgument as exc:
        index = {
            f"update_mask.paths[{new}]": f"update_mask.paths[{old}]" for new, (old, _) in enumerate(fields)
        }
        renamed = [
            FieldViolation(index.get(v.field, v.field), v.description, v.reason) for v in exc.violations
        ]
        raise InvalidArgument(violations=renamed) from None
