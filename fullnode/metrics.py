"""Prometheus metrics of a full node (docs/operator.md lists them).

`NodeMetrics` owns its own CollectorRegistry (never the library's global
one, so several nodes in one process, as in the tests, keep apart). Gauges
are read at scrape time through callbacks the node binds once; counters and
the histogram are fed by the node as things happen. `serve` exposes the
registry over HTTP; nothing is served unless the operator asks for it
(`--metrics-port`).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pouw.httpthread import stop_http_thread

log = logging.getLogger("pouw.metrics")

VERIFY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds: a devnet block verifies in about a second, a large task's block in minutes."""


def _safe(read: Callable[[], float]) -> Callable[[], float]:
    """A gauge callback that answers NaN instead of failing the whole scrape (a node stopping, a busy p2p thread)."""

    def value() -> float:
        try:
            return float(read())
        except Exception as exc:
            log.debug("metric callback failed: %s", exc)
            return math.nan

    return value


class MetricsServer:
    """The HTTP endpoint of one registry; `stop()` closes it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """Where Prometheus scrapes (`/metrics`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        stop_http_thread(self.httpd, self.thread)


class NodeMetrics:
    """The node's metrics: gauges read through callbacks, counters and a histogram the node feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tip_height = Gauge("pouw_tip_height", "Height of the node's best chain tip.", registry=self.registry)
        self.peers = Gauge("pouw_peers", "Connected libp2p peers.", registry=self.registry)
        self.mempool_size = Gauge("pouw_mempool_transactions", "Transactions waiting in the pool.", registry=self.registry)
        self.claims = Counter(
            "pouw_claims_verified", "Phase-2 claims whose work this node verified, by outcome.", ["result"],
            registry=self.registry,
        )
        self.verify_seconds = Histogram(
            "pouw_verification_seconds", "Seconds spent recomputing one block's Dice and spot-checking its training.",
            buckets=VERIFY_BUCKETS, registry=self.registry,
        )
        self.bytes_fetched = Counter(
            "pouw_blob_bytes_fetched", "Blob bytes downloaded from links and peers for verification.",
            registry=self.registry,
        )
        for result in ("valid", "invalid"):
            self.claims.labels(result=result)  # both series exist from the start, at 0

    def bind(self, *, tip_height: Callable[[], float], peers: Callable[[], float], mempool_size: Callable[[], float]) -> None:
        """Where the gauges read their values at scrape time."""
        self.tip_height.set_function(_safe(tip_height))
        self.peers.set_function(_safe(peers))
        self.mempool_size.set_function(_safe(mempool_size))

    def record_claim(self, valid: bool) -> None:
        """One claim verified (valid: it became the block; invalid: it was rejected)."""
        self.claims.labels(result="valid" if valid else "invalid").inc()

    def record_verification(self, seconds: float) -> None:
        """One block's work verified (or found invalid) in `seconds`."""
        self.verify_seconds.observe(seconds)

    def record_fetch(self, nbytes: int) -> None:
        """A blob of `nbytes` downloaded."""
        self.bytes_fetched.inc(nbytes)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Expose the registry at http://host:port/metrics (port 0: any free port)."""
        return MetricsServer(self.registry, host, port)


__all__ = ["MetricsServer", "NodeMetrics", "VERIFY_BUCKETS"]
