"""Child processes that do not outlive their parent, even when it is killed outright.

The launcher starts the services and Envoy, and a service with workers starts worker processes. A
parent stopped by SIGINT or SIGTERM stops its children itself; a parent killed by SIGKILL (or the
OOM killer) runs no code, so the kernel has to tell the children: ``prctl(PR_SET_PDEATHSIG,
SIGTERM)`` in the child makes the kernel send it SIGTERM — every process's graceful stop — when its
parent dies. Chosen over a pipe the child watches because it needs no code in the child (Envoy is
not ours) and no thread.

The signal fires when the *thread* that started the child ends, not the whole process: start bound
children from a thread that lives as long as the process (the main thread, where the asyncio loop
of the launcher runs), never from a pool thread such as ``asyncio.to_thread``'s.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Final, TypedDict

__all__ = ["ChildOptions", "bound_child", "die_with_parent"]

_PR_SET_PDEATHSIG: Final = 1
# Resolved once in the parent: the child, between fork and exec, only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """In a child: asks the kernel for ``signum`` when the parent dies (sent now if it already has).

    Args:
        parent_pid: The parent's pid, taken in the parent: if the child's parent is another process
            by now, the parent died before the request was made, and the signal is sent at once.
        signum: The signal to receive.

    Raises:
        OSError: ``prctl`` failed.

    """
    if _prctl is None:  # not Linux: nothing to ask for
        return
    if _prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


class ChildOptions(TypedDict, total=False):
    """Keyword arguments of :class:`subprocess.Popen` for a bound child."""

    start_new_session: bool
    preexec_fn: Callable[[], None]


def bound_child() -> ChildOptions:
    """Popen options for a child that gets SIGTERM when this process dies, and not Ctrl-C.

    The child runs in its own session, so a terminal's Ctrl-C reaches only this process, which then
    stops its children in order; and :func:`die_with_parent` runs in the child before it executes
    its program, so it ends (SIGTERM) when this process does, however that happens. Call ``Popen``
    from a long-lived thread (see the module docstring).
    """
    return {"start_new_session": True, "preexec_fn": functools.partial(die_with_parent, os.getpid())}
