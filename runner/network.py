"""Is a server in reach? Answered in seconds, so an offline machine never waits on a library's retries."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why ``url``'s host cannot be reached within ``timeout`` seconds (name lookup included), or None."""
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:.0f} s"
