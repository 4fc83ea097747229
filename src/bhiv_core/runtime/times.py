"""Conversions between Unix seconds and protobuf timestamps, shared by every service."""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["seconds_of", "to_timestamp"]


def to_timestamp(seconds: float) -> Timestamp:
    """Converts Unix seconds to a ``Timestamp`` that converts back to the very same float.

    The fraction is split off first: ``seconds * 1e9`` would lose the last bits of the float, and
    a ``since`` filter built from a listed time must not end up a hair after it.
    """
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return Timestamp(seconds=whole, nanos=nanos)


def seconds_of(stamp: Timestamp) -> float:
    """The Unix seconds of a ``Timestamp`` (the validation layer has checked its range)."""
    return stamp.seconds + stamp.nanos / 1e9
