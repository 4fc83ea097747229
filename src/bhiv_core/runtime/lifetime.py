"""Child processes that do not outlive their parent, even when it is killed outright.

The launcher starts the services and Envoy, and a service with workers starts worker processes. A
parent stopped by SIGINT or SIGTERM stops its children itself; a parent killed by SIGKILL (or the
OOM killer) runs no code, so the kernel has to tell the children: ``prctl(PR_SET_PDEATHSIG,
SIGTERM)`` in the child makes the kernel send it SIGTERM — every process's graceful stop — when its
parent dies. Chosen over a pipe the child watches because it needs no code in the child's program
(Envoy is not ours) and no thread.

The request is made in the child, before its program runs: :func:`bound_command` runs it through
this module's :func:`_main` (``python -c ... PARENT_PID PROGRAM ARGS...``), which makes the request
and then executes the program in the same process (the setting survives ``execve``). Not
a ``preexec_fn``: that makes :mod:`subprocess` use ``fork()`` instead of ``vfork()``, which runs
grpc's fork handlers, and with grpc busy in the parent about a third of such children crash
(SIGSEGV, SIGABRT) before they run their program. A worker process calls :func:`die_with_parent`
itself.

The signal fires when the *thread* that started the child ends, not the whole process: start bound
children from a thread that lives as long as the process (the main thread, where the asyncio loop
of the launcher runs), never from a pool thread such as ``asyncio.to_thread``'s.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["bound_command", "die_with_parent"]

_PR_SET_PDEATHSIG: Final = 1
# Finds this module wherever it was imported from: the child's environment need not say.
_BOOTSTRAP: Final = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
    "from bhiv_core.runtime.lifetime import _main; _main(sys.argv)"
)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """In a child: asks the kernel for ``signum`` when the parent dies (sent now if it already has).

    Args:
        parent_pid: The parent's pid, taken in the parent: if the child's parent is another process
            by now, the parent died before the request was made, and the signal is sent at once.
        signum: The signal to receive.

    Raises:
        OSError: ``prctl`` failed.

    """
    if sys.platform != "linux":  # PR_SET_PDEATHSIG is Linux's; elsewhere nothing to ask for
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


def bound_command(command: Sequence[str]) -> list[str]:
    """The command line that runs ``command`` so that it gets SIGTERM when this process dies.

    Start it from a long-lived thread (see the module docstring), and in its own session
    (``start_new_session=True``) when a terminal's Ctrl-C should reach only this process, which then
    stops its children in order.
    """
    return [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), *command]


def _main(argv: Sequence[str]) -> None:
    """Asks for SIGTERM on the parent's death, then becomes the program: ``_ PARENT_PID PROGRAM [ARG...]``."""
    die_with_parent(int(argv[1]))
    os.execvp(argv[2], list(argv[2:]))  # noqa: S606 - the parent's own command line, no shell
