"""A loopback HTTP server that answers every request with one fixed status and records what was asked
of it: the test session's HTTP(S) proxy (403 to all) and the W&B stand-in that refuses every key (401).

The test session points ``HTTP_PROXY``/``HTTPS_PROXY`` at a :class:`RecordingServer` (loopback excepted
through ``NO_PROXY``), so a program the Python guard cannot see into (W&B's Go service) shows there any
request it tries to send off this machine.
"""

from __future__ import annotations

import http.server
import threading


class RecordingServer:
    def __init__(self, status: int = 403, body: bytes = b"") -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Answer(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                seen.append(f"{self.command} {self.path}")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_CONNECT = do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
