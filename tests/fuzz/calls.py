"""Raw calls for the fuzz suite: any bytes to any method, and what came back, measured.

The channels accept far more than the services may send (64 MiB messages, 4 MiB of metadata), so
an oversized answer is measured and reported instead of being refused by the client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    ("grpc.absolute_max_metadata_size", 4 * 1024 * 1024),
    # A retried call would hide what the first attempt got.
    ("grpc.enable_retries", 0),
]

Metadata = Sequence[tuple[str, str | bytes]]


def channel(address: str) -> grpc.Channel:
    """A channel to ``address`` that receives oversized answers so they can be measured."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


@dataclass
class Outcome:
    """What one call got back.

    Attributes:
        code: The final status (CANCELLED when the fuzzer cut a stream itself).
        details: The status message.
        message_sizes: The size of each response message, in bytes.
        metadata_bytes: Response headers and trailers (names and values) plus the status message.
        seconds: How long the call took.
        cut: True when the fuzzer stopped reading a stream (by cancelling it or by its deadline).

    """

    code: grpc.StatusCode
    details: str
    message_sizes: list[int] = field(default_factory=list)
    metadata_bytes: int = 0
    seconds: float = 0.0
    cut: bool = False


def _metadata_bytes(call: grpc.Call, details: str) -> int:
    total = len(details.encode())
    for pairs in (call.initial_metadata(), call.trailing_metadata()):
        for key, value in pairs or ():
            total += len(key) + len(value)
    return total


def unary(channel: grpc.Channel, path: str, body: bytes, metadata: Metadata, timeout: float) -> Outcome:
    """Sends ``body`` as the request of the unary method ``path``."""
    start = time.perf_counter()
    try:
        response, call = channel.unary_unary(path).with_call(body, metadata=metadata, timeout=timeout)
    except grpc.RpcError as err:
        details = err.details() or ""  # type: ignore[attr-defined]
        return Outcome(
            err.code(),  # type: ignore[attr-defined]
            details,
            metadata_bytes=_metadata_bytes(err, details),  # type: ignore[arg-type]
            seconds=time.perf_counter() - start,
        )
    return Outcome(
        grpc.StatusCode.OK,
        "",
        [len(response)],
        _metadata_bytes(call, ""),
        time.perf_counter() - start,
    )


def server_stream(
    channel: grpc.Channel,
    path: str,
    body: bytes,
    metadata: Metadata,
    *,
    deadline: float,
    patience: float,
    max_messages: int,
) -> Outcome:
    """Sends ``body`` to the server-streaming method ``path`` and reads a few messages.

    Reading stops after ``max_messages``, or when the stream has been quiet for ``patience``
    seconds (for its first message, then between messages), or at ``deadline``; a stream still open
    then is cut, which is the fuzzer's doing (a watch never ends by itself).
    """
    start = time.perf_counter()
    stream = channel.unary_stream(path)(body, metadata=metadata, timeout=deadline)
    received: queue.Queue[int | None] = queue.Queue()

    def pump() -> None:
        try:
            for message in stream:
                received.put(len(message))
        except grpc.RpcError:
            pass
        finally:
            received.put(None)

    reader = threading.Thread(target=pump, name=f"stream {path}", daemon=True)
    reader.start()
    sizes: list[int] = []
    cut = False
    while True:
        try:
            size = received.get(timeout=patience)
        except queue.Empty:
            cut = True
            break
        if size is None:
            break
        sizes.append(size)
        if len(sizes) >= max_messages:
            cut = True
            break
    if cut:
        stream.cancel()
    reader.join(timeout=deadline)
    code = stream.code()
    details = stream.details() or ""
    cut = cut or code is grpc.StatusCode.DEADLINE_EXCEEDED
    return Outcome(code, details, sizes, _metadata_bytes(stream, details), time.perf_counter() - start, cut)


class Watch:
    """A ``Health/Watch`` stream read by a thread: every status it sends, and how it ended.

    Args:
        channel: Where to watch from (a channel of its own, or one shared with other calls to see
            whether they disturb it).
        metadata: Headers of the call (``x-bhiv-service`` through the edge).
        label: Names the watch in reports.

    """

    def __init__(self, channel: grpc.Channel, metadata: Metadata = (), label: str = ""):
        self.label = label
        self.statuses: list[str] = []
        self.ended: str | None = None
        self.opened = time.monotonic()
        self._closing = False
        self._stream = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )(health_pb2.HealthCheckRequest(service=""), metadata=metadata)
        self._thread = threading.Thread(target=self._read, name=f"watch {label}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._stream:
                self.statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            ended = "the server ended it"
        except grpc.RpcError as err:
            ended = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
        if not self._closing:
            self.ended = ended

    @property
    def not_serving(self) -> list[str]:
        """Every status other than SERVING it was sent."""
        return [s for s in self.statuses if s != "SERVING"]

    def close(self) -> None:
        """Cancels the stream and waits for its reader."""
        self._closing = True
        self._stream.cancel()
        self._thread.join(timeout=10)


class Bystanders:
    """A health watch on each channel the fuzzer calls through, reopened when it ends.

    A probe must not end other streams of its connection (an HTTP/2 GOAWAY, a reset connection):
    after each probe, the watch on the probe's channel must still be open.

    Args:
        channels: The fuzzer's channels by target name (``edge`` or a service).

    """

    MAX_AGE = 240.0
    """Seconds a watch is kept: below the edge's 300 s idle timeout, which ends it legitimately."""

    OPEN_DEADLINE = 20.0

    def __init__(self, channels: dict[str, grpc.Channel]):
        self._channels = channels
        self._watches: dict[str, Watch] = {}

    def ready(self, target: str) -> None:
        """Makes sure the watch on ``target``'s channel is open and has had its first answer."""
        watch = self._watches.get(target)
        if watch is not None and watch.ended is None and time.monotonic() - watch.opened < self.MAX_AGE:
            return
        if watch is not None:
            watch.close()
        # Through the edge a health call needs to say which service it is for.
        metadata = (("x-bhiv-service", "identity"),) if target == "edge" else ()
        watch = Watch(self._channels[target], metadata, label=f"bystander {target}")
        deadline = time.monotonic() + self.OPEN_DEADLINE
        while not watch.statuses and watch.ended is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the bystander watch on {target} got no answer in {self.OPEN_DEADLINE} s"
                )
            time.sleep(0.005)
        if watch.ended is not None:
            raise AssertionError(f"the bystander watch on {target} ended at once: {watch.ended}")
        self._watches[target] = watch

    def broken(self, target: str, wait: float = 0.0) -> str | None:
        """How the watch on ``target``'s channel ended since :meth:`ready`, or None if it is open.

        Args:
            target: The channel's name.
            wait: How long to give a connection-level failure to reach the watch (a probe that saw
                its connection fail gets a moment; the watch is found ended as soon as it is).

        """
        watch = self._watches.get(target)
        if watch is None:
            return None
        deadline = time.monotonic() + wait
        while watch.ended is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if watch.ended is None:
            return None
        del self._watches[target]
        watch.close()
        return watch.ended

    def close(self) -> None:
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
