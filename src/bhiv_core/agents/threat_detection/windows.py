"""Sliding-window counting with bounded memory, for the behavioural detectors.

:class:`BoundedMap` keeps at most ``max_keys`` keys, forgetting the least recently used one first,
so an attacker rotating addresses or usernames costs memory up to that bound and no more (at worst
it makes the detectors forget some keys early). :class:`EventWindow` keeps at most the timestamps
a threshold needs; :class:`DistinctWindow` at most a bounded number of distinct values.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BoundedMap", "DistinctWindow", "EventWindow"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A map of at most ``max_keys`` keys; touching a key makes it the most recently used.

    Args:
        max_keys: The most keys kept.
        factory: Makes the value of a new key.

    """

    def __init__(self, max_keys: int, factory: Callable[[], V]):
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._factory = factory
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def touch(self, key: K) -> V:
        """Returns the value of ``key`` (made when missing), evicting the least recent key if full."""
        value = self._items.get(key)
        if value is None:
            value = self._factory()
            self._items[key] = value
            if len(self._items) > self.max_keys:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return value

    def get(self, key: K) -> V | None:
        """Returns the value of ``key`` without touching it, or None."""
        return self._items.get(key)

    def pop(self, key: K) -> V | None:
        """Removes ``key`` and returns its value, or None."""
        return self._items.pop(key, None)


class EventWindow:
    """The times of the latest events of one key, enough to tell whether ``limit`` fell in a window.

    Args:
        seconds: The window's length.
        limit: The most timestamps kept (the detector's threshold).

    Attributes:
        fired_at: When the detector last fired for this key (-inf: never); it fires again only
            after a whole window, so one attack is one detection per window, not one per event.

    """

    __slots__ = ("_times", "fired_at", "seconds")

    def __init__(self, seconds: float, limit: int):
        self.seconds = seconds
        self._times: deque[float] = deque(maxlen=limit)
        self.fired_at = float("-inf")

    def add(self, now: float) -> int:
        """Records an event at ``now`` and returns how many recorded events fall in the window."""
        self._times.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        """How many recorded events fall in ``(now - seconds, now]``."""
        while self._times and self._times[0] <= now - self.seconds:
            self._times.popleft()
        return len(self._times)

    def clear(self) -> None:
        """Forgets every event (a successful login resets its account's count)."""
        self._times.clear()

    def may_fire(self, now: float) -> bool:
        """True (and records the firing) unless the key fired less than a window ago."""
        if now - self.fired_at < self.seconds:
            return False
        self.fired_at = now
        return True


class DistinctWindow:
    """The distinct values seen for one key within a window, at most ``limit`` of them.

    Args:
        seconds: The window's length.
        limit: The most distinct values kept (the detector's threshold).

    """

    __slots__ = ("_last_seen", "fired_at", "limit", "seconds")

    def __init__(self, seconds: float, limit: int):
        self.seconds = seconds
        self.limit = limit
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self.fired_at = float("-inf")

    def add(self, value: str, now: float) -> int:
        """Records ``value`` at ``now`` and returns how many distinct values fall in the window."""
        self._last_seen[value] = now
        self._last_seen.move_to_end(value)
        while len(self._last_seen) > self.limit:
            self._last_seen.popitem(last=False)
        return self.count(now)

    def count(self, now: float) -> int:
        """How many distinct values were seen in ``(now - seconds, now]``."""
        while self._last_seen:
            oldest, seen = next(iter(self._last_seen.items()))
            if seen > now - self.seconds:
                break
            del self._last_seen[oldest]
        return len(self._last_seen)

    def values(self) -> list[str]:
        """The distinct values kept, oldest first."""
        return list(self._last_seen)

    def may_fire(self, now: float) -> bool:
        """True (and records the firing) unless the key fired less than a window ago."""
        if now - self.fired_at < self.seconds:
            return False
        self.fired_at = now
        return True
