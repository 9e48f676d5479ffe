"""The test session's network guard: no connection leaves this machine.

Imported by the test session itself (``tests/conftest.py``) and, through ``PYTHONPATH``, by every
Python process a test starts. A connection to an address that is not loopback is refused and written
to the file ``RUNNER_TEST_NETGUARD`` names; the conftest fails the test that caused it. Programs that
are not Python (W&B's service) are held by the same session's recording proxy instead.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

ENV = "RUNNER_TEST_NETGUARD"


def _loopback(host: str) -> bool:
    try:
        addresses = [ipaddress.ip_address(host.split("%")[0])]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)]
        except OSError:
            return False  # a name that does not resolve here is not on this machine
    return bool(addresses) and all(a.is_loopback for a in addresses)


def _outside(sock: socket.socket, address) -> str | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return None
    host, port = str(address[0]), address[1]
    return None if _loopback(host) else f"{host}:{port}"


def install(log_path: str) -> None:
    """Refuse and record every connection of this process to an address that is not loopback."""
    if getattr(socket.socket, "_runner_guarded", False):
        return
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(sock, address):
        target = _outside(sock, address)
        if target is None:
            return
        stack = "".join(traceback.format_stack(limit=12)[:-2])
        with open(log_path, "a") as log:
            log.write(f"pid {os.getpid()} connected to {target}\n{stack}\n")
        raise ConnectionRefusedError(f"the test session's network guard refused {target} (not loopback)")

    def guarded_connect(sock, address):
        refuse(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        refuse(sock, address)
        return connect_ex(sock, address)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.socket._runner_guarded = True


if os.environ.get(ENV):
    install(os.environ[ENV])

if os.environ.get("RUNNER_TEST_SIGNAL_AT"):  # fault injection (signal_at.py), for the tests that ask for it
    from signal_at import install as install_signal_at

    install_signal_at(os.environ["RUNNER_TEST_SIGNAL_AT"])
