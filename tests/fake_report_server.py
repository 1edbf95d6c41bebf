"""A tiny real HTTP server standing in for the report endpoint (shared by reporter and launch tests).

It stores events like the real endpoint, at most once per (attempt, seq), and can go down and
come back on the same port.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeController:
    """Stores report batches like the real endpoint: at most once per (attempt, seq)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.stored: dict[tuple[int, int], dict[str, Any]] = {}
        self.auth: list[str | None] = []
        self.status = 200
        self.action = "none"
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        ctl = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with ctl.lock:
                    ctl.auth.append(self.headers.get("Authorization"))
                    status = ctl.status
                    if status == 200:
                        ctl.batches.append(body)
                        new = 0
                        for e in body["events"]:
                            new += (body["attempt"], e["seq"]) not in ctl.stored
                            ctl.stored.setdefault((body["attempt"], e["seq"]), e)
                        reply = {
                            "accepted": new,
                            "duplicates": len(body["events"]) - new,
                            "action": ctl.action,
                        }
                    else:
                        reply = {"detail": "nope"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seqs(self, attempt: int) -> list[int]:
        with self.lock:
            return sorted(s for a, s in self.stored if a == attempt)
