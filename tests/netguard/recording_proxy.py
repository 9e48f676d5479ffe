"""An HTTP(S) proxy on loopback that answers 403 to everything and records what was asked of it.

The test session points ``HTTP_PROXY``/``HTTPS_PROXY`` at it (loopback excepted through
``NO_PROXY``), so a program the Python guard cannot see into (W&B's Go service) shows here any
request it tries to send off this machine.
"""

from __future__ import annotations

import http.server
import threading


class RecordingProxy:
    def __init__(self) -> None:
        self.seen: list[str] = []
        seen = self.seen

        class Refuse(http.server.BaseHTTPRequestHandler):
            def _refuse(self):
                seen.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_CONNECT = do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _refuse

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
