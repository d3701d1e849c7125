"""The miner's link to its node: RPC calls that ride out node restarts."""

from __future__ import annotations

import time
from typing import Any, Callable

from pouw.rpc import RpcAuthError, RpcClient, RpcConnectionError

from miner.events import Reporter
from miner.plan import compute_backoff


class NodeGone(Exception):
    """The node stayed unreachable until the caller's deadline."""


class NodeLink:
    """Wraps RpcClient: connection failures are retried with backoff, reported once per outage.

    Rejections (`RpcError` with a node's code) are not retried: they are
    answers. A 401 is retried too, because a restarted node writes a new
    cookie and a call can race it.
    """

    def __init__(self, client: RpcClient, reporter: Reporter, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.reporter = reporter
        self.sleep = sleep
        self.down_since: float | None = None
        self.rtt = 0.0
        """Smoothed round-trip time of successful calls, seconds."""
        self.reconnects = 0
        """How many outages ended (the loop re-checks the chain after one)."""

    def call(self, method: str, *, until: float | None = None, **params: Any) -> Any:
        """Call `method`; retry while the node is unreachable, until `until` (Unix time) if given."""
        attempt = 0
        while True:
            started = time.time()
            try:
                result = self.client.call(method, **params)
            except (RpcConnectionError, RpcAuthError) as exc:
                if self.down_since is None:
                    self.down_since = time.time()
                    self.reporter.emit("node-unreachable", f"{exc}; retrying", error=str(exc))
                delay = compute_backoff(attempt)
                attempt += 1
                if until is not None and time.time() + delay > until:
                    raise NodeGone(str(exc)) from None
                self.sleep(delay)
                continue
            took = time.time() - started
            self.rtt = took if self.rtt == 0.0 else 0.8 * self.rtt + 0.2 * took
            if self.down_since is not None:
                self.reporter.emit(
                    "node-back", f"node at {self.client.url} is back after {time.time() - self.down_since:.0f} s"
                )
                self.down_since = None
                self.reconnects += 1
            return result
