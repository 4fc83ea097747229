"""Engines (OCR, speech, decoders) loaded lazily, once per process, off the event loop.

An engine's import and model loading take a second or more and may fail where the package or its
model files are missing. :class:`LazyEngine` runs the loader in a worker thread on first use, under a
lock, so concurrent first calls (from any event loop or thread) load once; a failure is remembered
too and reported as :class:`EngineUnavailable` with its reason, so an agent can say what it cannot
do without trying again on every request.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Generic, TypeVar

__all__ = ["EngineUnavailable", "LazyEngine", "import_engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineUnavailable(Exception):
    """An engine cannot be loaded here (its package or its model is missing, or it failed to start).

    Attributes:
        reason: For people: what is missing.

    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def import_engine(module: str) -> ModuleType:
    """Imports an engine's module, turning an import failure into :class:`EngineUnavailable`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailable(f"the {module!r} package cannot be imported ({exc})") from exc


class LazyEngine(Generic[T]):
    """One engine, loaded at most once per process.

    Attributes:
        name: The engine's name, for messages (``OCR``, ``speech recognition``).
        loads: How many times the loader ran (at most one; tests read it).

    """

    def __init__(self, name: str, loader: Callable[[], T]):
        self.name = name
        self.loads = 0
        self._loader = loader
        self._lock = threading.Lock()
        self._done = False
        self._engine: T | None = None
        self._error = ""

    def load(self) -> T:
        """Returns the engine, loading it on the first call (blocking: call it from a worker thread).

        Raises:
            EngineUnavailable: The engine could not be loaded (now or on an earlier call).

        """
        with self._lock:
            if not self._done:
                self.loads += 1
                try:
                    self._engine = self._loader()
                except EngineUnavailable as exc:
                    self._error = exc.reason
                except Exception as exc:  # an engine failing to start (bad model file, ABI) is "unavailable"
                    log.warning("%s engine failed to load", self.name, exc_info=True)
                    self._error = f"the {self.name} engine failed to load ({type(exc).__name__}: {exc})"
                self._done = True
        if self._engine is None:
            raise EngineUnavailable(self._error)
        return self._engine

    async def get(self) -> T:
        """Returns the engine, loading it in a worker thread on first use.

        Raises:
            EngineUnavailable: The engine could not be loaded.

        """
        if self._done and self._engine is not None:
            return self._engine
        return await asyncio.to_thread(self.load)

    async def get_or_reason(self) -> tuple[T | None, str]:
        """Returns ``(engine, "")``, or ``(None, why)`` when it cannot be loaded (for callers that go on)."""
        try:
            return await self.get(), ""
        except EngineUnavailable as exc:
            return None, exc.reason
