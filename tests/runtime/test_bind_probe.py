"""The bind probe answers what the server's own bind would: TIME_WAIT is free, a listener is taken."""

from __future__ import annotations

import socket

import pytest

from bhiv_core.runtime.server import bind_error
from tests.procfs import TCP_TIME_WAIT, tcp_sockets, wait_until

HOST = "127.0.0.1"


def _leave_time_wait() -> int:
    """Serves one connection and closes it server side first, then stops listening.

    The side that closes first keeps the connection in TIME_WAIT for a minute, as a stopped
    server's port does after it hung up on its clients.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection((HOST, port)) as client:
            conn, _ = listener.accept()
            conn.close()
            assert client.recv(1) == b""
    wait_until(lambda: bool(tcp_sockets(port, TCP_TIME_WAIT)), 10, f"a connection in TIME_WAIT on {port}")
    return port


def test_a_port_with_only_time_wait_connections_is_free() -> None:
    port = _leave_time_wait()
    assert bind_error(HOST, port) is None
    # What the probe promises: the server's own bind (with SO_REUSEADDR) succeeds now.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen()


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_a_port_with_a_listener_is_taken(reuseport: bool) -> None:
    # grpc sets SO_REUSEPORT by default: a probe that set it too would bind beside that listener.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((HOST, 0))
        listener.listen()
        error = bind_error(HOST, listener.getsockname()[1])
    assert error is not None
    assert error.strerror == "Address already in use"
