"""Run a P2PNode in a background thread for synchronous callers (CLI, RPC
handlers, the full node's worker). Node calls go through trio.from_thread
with the node's trio token, so they run inside the node's event loop;
`penalize` and `ban` return at once (the node records them under a lock
and applies the network side in its loop), and `submit` starts a call
without waiting for it (e.g. fetch the next sync batch while this one is
being connected)."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Awaitable, Callable

import trio

from .framing import P2PError
from .node import P2PNode, PeerLike


class P2PThread:
    def __init__(self, node: P2PNode, *, name: str = "pouw-p2p"):
        self.node = node
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._nursery: trio.Nursery | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> "P2PThread":
        if self._thread is not None:
            raise P2PError("the p2p thread is already started")
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise P2PError(f"the p2p node did not start within {timeout} s")
        if self._error is not None:
            raise P2PError(f"the p2p node failed to start: {self._error}") from self._error
        return self

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # reported to start() or kept for stop()
            self._error = exc
        finally:
            self._started.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with self.node, trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the node's loop and return its result."""
        if self._token is None or not self._started.is_set() or self._error is not None:
            raise P2PError("the p2p node is not running")
        try:
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise P2PError("the p2p node is not running") from None

    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> concurrent.futures.Future:
        """Start ``await fn(*args)`` in the node's loop and return at once; the Future
        gets its result or exception (P2PError if the node stops first)."""
        if self._token is None or not self._started.is_set() or self._error is not None:
            raise P2PError("the p2p node is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        async def run() -> None:
            try:
                future.set_result(await fn(*args))
            except trio.Cancelled:
                future.set_exception(P2PError("the p2p node stopped before the call finished"))
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        def launch() -> None:  # runs in the loop; must not raise there
            try:
                self._nursery.start_soon(run)
            except RuntimeError:  # the nursery is closing: the node is stopping
                future.set_exception(P2PError("the p2p node is not running"))

        try:
            self._token.run_sync_soon(launch)
        except trio.RunFinishedError:
            raise P2PError("the p2p node is not running") from None
        return future

    def penalize(self, peer: PeerLike, points: float, reason: str) -> float:
        """Lower `peer`'s score (ban at the threshold); returns at once with the new score."""
        return self.node.penalize(peer, points, reason)

    def ban(self, peer: PeerLike, seconds: float, reason: str) -> None:
        """Ban `peer` for `seconds`: refused from now on; its connections close in the node's loop."""
        self.node.ban(peer, seconds, reason)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plain function (e.g. node.ban) in the node's loop."""
        if self._token is None:
            raise P2PError("the p2p node is not running")
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise P2PError("the p2p node is not running") from None

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise P2PError(f"the p2p node did not stop within {timeout} s")
        self._thread = None
        self._token = None

    def __enter__(self) -> "P2PThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
