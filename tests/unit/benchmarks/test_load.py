"""The load driver against a real HTTP/1.1 server in this process (http.server, keep-alive)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from graft.benchmarks.load import JsonWorkload, run_load


class Handler(BaseHTTPRequestHandler):
    """200 with a JSON echo of the body; 429 with Retry-After when the body asks for it; closes the
    connection after a body that asks for that (a server that does not keep every connection alive)."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_POST(self) -> None:
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append({"path": self.path, "type": self.headers["Content-Type"], **document})
        status = 429 if document.get("refuse") else 200
        body = json.dumps({"got": document}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "0")
        if document.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server():
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_counts_answers_by_status_and_sends_each_document_as_json(server):
    documents = [{"n": 0}, {"n": 1, "refuse": True}, {"n": 2}]
    result = run_load(JsonWorkload(f"{server}/embed?x=1", documents), concurrency=2, max_requests=30,
                      max_seconds=10)
    assert result.requests == 30 and result.unfinished == 0
    # The warm-up sends document 0 unrecorded; timed requests cycle through all three.
    assert len(result.latencies) == 20 and result.errors == {"429": 10}
    assert all(seen["path"] == "/embed?x=1" and seen["type"] == "application/json" for seen in Handler.seen)
    # Request i carries document i % 3 (the two clients' requests may reach the server in either order).
    assert Counter(seen["n"] for seen in Handler.seen[1:]) == {0: 10, 1: 10, 2: 10}


def test_reconnects_when_the_server_closes_the_connection(server):
    documents = [{"n": 0, "close": True}]
    result = run_load(JsonWorkload(f"{server}/embed", documents), concurrency=3, max_requests=12, max_seconds=10)
    assert len(result.latencies) == 12 and not result.errors


def test_a_refused_connection_is_an_error_not_a_crash():
    with pytest.raises(OSError):
        run_load(JsonWorkload("http://127.0.0.1:9/embed", [{}]), concurrency=1, max_requests=1, max_seconds=1)
