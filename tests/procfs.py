"""What the kernel says about processes and TCP sockets, read from /proc (Linux), for tests.

Processes are identified by (pid, start time) so that a recycled pid is not taken for the process
that died.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

Proc = tuple[int, int]
"""A process: its pid and its start time (clock ticks since boot)."""

TCP_LISTEN = "0A"
TCP_TIME_WAIT = "06"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def parent(pid: int) -> int | None:
    """The parent of ``pid``, or None when ``pid`` does not exist."""
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it does not exist)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def descendants(pid: int) -> set[Proc]:
    """Every living process below ``pid`` (children, their children, ...)."""
    parents: dict[int, list[Proc]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z":
                parents.setdefault(stat[1], []).append((int(entry), stat[2]))
    found: set[Proc] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(procs: Iterable[Proc]) -> set[Proc]:
    """The processes of ``procs`` that still run (a zombie has exited)."""
    living = set()
    for pid, start in procs:
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[0] != "Z":
            living.add((pid, start))
    return living


def tcp_sockets(port: int, state: str) -> list[int]:
    """The inodes of TCP sockets (IPv4, and IPv6 as grpc binds) with local ``port``, in ``state``.

    ``state`` is the kernel's hex code (:data:`TCP_LISTEN`, :data:`TCP_TIME_WAIT`).
    """
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, st, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and st == state:
                inodes.append(inode)
    return inodes


def listening_pids(port: int) -> set[int]:
    """The processes holding a listening socket on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in tcp_sockets(port, TCP_LISTEN)}
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in wanted for fd in fds):
                pids.add(int(entry))
        except OSError:
            continue  # gone, or not ours to read
    return pids


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``condition`` every 50 ms until it holds; fails the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.05)
