"""Running a standard-library HTTP server in a background thread (the RPC and blob servers)."""

from __future__ import annotations

import threading
from http.server import HTTPServer


def start_http_thread(httpd: HTTPServer, name: str) -> threading.Thread:
    """Serve `httpd` from a daemon thread; returns the thread."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name=name, daemon=True)
    thread.start()
    return thread


def stop_http_thread(httpd: HTTPServer, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Stop serving, close the socket and wait for the thread."""
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout)
