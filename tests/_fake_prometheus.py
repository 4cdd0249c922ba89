"""A fake Prometheus HTTP API for the collector's tests: the query's parameters in, a range-query matrix out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class RangeQueryHandler(BaseHTTPRequestHandler):
    """Answers ``/api/v1/query_range``: a subclass's ``series(query, start, end, step)`` gives the result list
    (``[{"metric": labels, "values": [[t, "v"], ...]}, ...]``)."""

    def series(self, query: str, start: float, end: float, step: float) -> list[dict]:
        raise NotImplementedError

    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        result = self.series(q["query"][0], float(q["start"][0]), float(q["end"][0]), float(q["step"][0]))
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):  # keep the test output clean
        pass


@contextmanager
def serving(handler: type[RangeQueryHandler]) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """The handler on a free loopback port for the block: ``(server, base URL)``."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
