"""The full node daemon: the core plus its adapters, threads and servers.

  * `NodeCore` (fullnode/core.py) owns the chain state, the pools and the key
    book; it has no clock and no threads.
  * The p2p thread runs the libp2p host (trio); gossip validators call the
    core from trio's worker threads (fullnode/gossip.py).
  * One worker thread takes the long jobs in order: blocks from peers down
    the block road, Phase-2 claim verification, sync (fullnode/sync.py).
  * The phase thread is the clock: it ticks the core, gossips the keys it
    reveals and queues verification and sync.
  * RPC request threads call the core (fullnode/rpcapi.py).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from consensus.chainstate import BlockResult, BlockStatus, ChainState
from consensus.sigcheck import SignatureChecker
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobStore
from pouw.encoding import encode
from pouw.p2p.blob import serve_blobs
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.rpc import RpcServer
from pouw.types import Block

from fullnode.config import NodeConfig, load_or_create_p2p_seed, write_node_file
from fullnode.core import NodeCore
from fullnode.explorer import ExplorerServer
from fullnode.fetch import BlobFetcher, PeerBlobSource
from fullnode.verification import WorkChecker
from fullnode.gossip import GossipAdapter
from fullnode.keys import PublisherKeyFiles
from fullnode.messages import MAX_HEADER_ROOM
from fullnode.metrics import NodeMetrics
from fullnode.prefetch import TaskPrefetcher
from fullnode.prune import Pruner
from fullnode.rpcapi import RpcContext, make_handlers
from fullnode.sync import SyncAdapter

log = logging.getLogger("pouw.node")

SYNC_INTERVAL = 3.0
"""Seconds between status checks with peers."""
TICK_SECONDS = 0.2
"""How often the phase thread looks at the clock."""


class FullNode:
    """One full node. `start()` opens everything; `stop()` closes it cleanly."""

    def __init__(self, config: NodeConfig, *, log_fn: Callable[[str], None] | None = None):
        self.config = config
        self.params = config.params
        self.datadir = Path(config.datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.log = log_fn or (lambda msg: log.info(msg))
        self.sigcheck = SignatureChecker()
        self.blobs = BlobStore(self.datadir / "blobs")
        (self.datadir / "work").mkdir(exist_ok=True)
        self.chain = ChainState.open(self.datadir / "chain", self.params, sigcheck=self.sigcheck)
        self.metrics = NodeMetrics()
        self.fetcher = BlobFetcher(self.blobs, on_fetched=self.metrics.record_fetch)
        self.work_checker = WorkChecker(self.params, self.blobs, self.fetcher, self.datadir / "work", config.assume_valid,
                                        on_verified=self.metrics.record_verification,
                                        workers=config.verify_workers, device=config.verify_device)
        self.core = NodeCore(
            self.params, self.chain, self.work_checker,
            key_files=PublisherKeyFiles(self.datadir / "taskkeys"),
            claim_wait_seconds=config.claim_wait_seconds, log_fn=self.log, on_claim_judged=self.metrics.record_claim,
            verify_parallelism=self.work_checker.parallelism,
        )
        # Blobs: prefetch scheduled tasks' data in Phase 1; prune after each slot unless --keep-all.
        self.prefetcher = TaskPrefetcher(self.core, self.fetcher, self.log)
        self.pruner = (Pruner(self.core, self.blobs, self.fetcher, self.datadir, self.log, config.prune_keep_blocks)
                       if config.prune else None)
        self.jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.p2p: P2PNode | None = None
        self.p2p_thread: P2PThread | None = None
        self.gossip: GossipAdapter | None = None
        self.sync: SyncAdapter | None = None
        self.blob_server: BlobServer | None = None
        self.rpc: RpcServer | None = None
        self.metrics_server = None
        self.explorer: ExplorerServer | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> "FullNode":
        """Start the blob server, the p2p host, the worker and phase threads, and the RPC server."""
        cfg = self.config
        self.work_checker.start()
        self.blob_server = BlobServer(self.blobs, host=cfg.host, port=cfg.blob_port).start()
        self.p2p = P2PNode(load_or_create_p2p_seed(self.datadir), host=cfg.host, port=cfg.p2p_port, bootstrap=cfg.bootstrap)
        serve_blobs(self.p2p, self.blobs)  # /pouw/blob/1: peers that cannot reach our HTTP blob server
        self.sync = SyncAdapter(self.core, self.p2p, self.fetcher, self.work_checker, self.get_blob_url, self.log,
                                self._stop.is_set, self.jobs)
        self.sync.register()
        self.gossip = GossipAdapter(self.core, self.p2p, self.jobs, self.sync.request_sync)
        self.gossip.register()
        self.sync.on_new_tip = self.gossip.publish_block
        self.p2p_thread = P2PThread(self.p2p).start()
        self.gossip.thread = self.sync.thread = self.p2p_thread
        self.fetcher.peers = PeerBlobSource(self.p2p, self.p2p_thread)  # the fallback when every link fails
        self.prefetcher.start()
        for target, name in ((self._worker_loop, "pouw-worker"), (self._phase_loop, "pouw-phase")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.rpc = RpcServer(make_handlers(self.rpc_context()), host=cfg.rpc_host, port=cfg.rpc_port, datadir=self.datadir,
                             max_body=2 * (self.params.max_block_size + MAX_HEADER_ROOM) + 65536).start()  # a claim in hex
        self._start_watchers()
        write_node_file(self.datadir, self.describe())
        addrs = self.p2p_addrs()
        self.log(f"node started: network {self.params.name}, height {self.chain.tip_height}, rpc {self.rpc.url}, "
                 f"p2p {addrs[0] if addrs else '-'}")
        return self

    def _start_watchers(self) -> None:
        """The metrics endpoint and the explorer page, each off unless its port is configured."""
        cfg = self.config
        self.metrics.bind(tip_height=lambda: self.chain.tip_height, peers=self.peer_count, mempool_size=lambda: len(self.core.txpool))
        if cfg.metrics_port is not None:
            self.metrics_server = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        if cfg.explorer_port is not None:
            self.explorer = ExplorerServer(self.chain, self.params, self.blobs, self.datadir / "explorer",
                                           host=cfg.explorer_host, port=cfg.explorer_port).start()

    def stop(self) -> None:
        """Stop every thread and close the database."""
        self._stop.set()
        self.jobs.put(None)
        if self.explorer is not None:  # it reads the chain: it stops before the database closes
            self.explorer.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.rpc is not None:
            self.rpc.stop()
        self.work_checker.close()  # a verification in flight ends without a judgement, so the worker thread can stop
        for thread in self._threads:
            thread.join(30)
        self.prefetcher.close()
        if self.p2p_thread is not None:
            self.p2p_thread.stop()
        if self.blob_server is not None:
            self.blob_server.stop()
        self.sigcheck.close()
        self.chain.close()
        (self.datadir / "node.json").unlink(missing_ok=True)
        self.log("node stopped")

    def rpc_context(self) -> RpcContext:
        """What the RPC methods may use."""
        return RpcContext(
            core=self.core, blobs=self.blobs, datadir=self.datadir, blob_url=self.get_blob_url,
            p2p_addrs=self.p2p_addrs, peer_count=self.peer_count, announce=self.gossip.publish,
            claim_taken=self.gossip.request_verification, pruning=self.pruner is not None,
        )

    def describe(self) -> dict:
        """Where this node listens (written to node.json)."""
        return {
            "network": self.params.name,
            "chain_id": self.params.chain_id.hex(),
            "rpc_url": self.rpc.url if self.rpc else None,
            "blob_url": self.get_blob_url(),
            "p2p_addrs": self.p2p_addrs(),
            "pid": os.getpid(),
            "explorer_url": self.explorer.url if self.explorer else None,
            "metrics_url": self.metrics_server.url if self.metrics_server else None,
        }

    def get_blob_url(self) -> str | None:
        """Base URL of this node's HTTP blob server."""
        return self.blob_server.url if self.blob_server else None

    def p2p_addrs(self) -> list[str]:
        """The libp2p multiaddrs peers can dial."""
        return self.p2p.listen_addrs if self.p2p is not None else []

    def peer_count(self) -> int:
        """Connected peers."""
        try:
            return len(self.p2p_thread.call_sync(self.p2p.connected_peers)) if self.p2p_thread else 0
        except Exception:
            return 0

    # --- the worker ---------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                break
            kind, obj, peer = job
            try:
                if kind == "block":
                    self.take_block(obj, peer)
                elif kind == "verify":
                    self.verify_claims()
                elif kind == "sync":
                    self.sync.sync_with_peers()
                elif kind == "prune":
                    self.pruner.run(time.time())
            except Exception as exc:  # a bad job must never kill the worker
                log.exception("worker job %s failed: %s", kind, exc)

    def take_block(self, block: Block, peer: str | None) -> BlockResult:
        """A block from a peer down the road; announce it if it is valid and new, penalise its sender if invalid."""
        result = self.core.process_block(block, time.time())
        if result.status in (BlockStatus.CONNECTED, BlockStatus.SIDE_BRANCH):
            self.gossip.publish_block(block)
        elif result.status in (BlockStatus.INVALID, BlockStatus.REFUSED):
            verb = "rejected" if result.status is BlockStatus.INVALID else "refused"
            self.log(f"{verb} block {block.header.height} {block.hash.hex()[:12]} from miner "
                     f"{block.header.miner.hex()[:12]}: {result.reason}")
            if peer and result.sender_at_fault:
                self.sync.penalize(peer, f"{result.status.value} block: {result.reason}")
        elif result.status is BlockStatus.MISSING and result.reason == "parent block is unknown":
            self.sync.request_sync()  # its ancestors come with the next sync
        return result

    def verify_claims(self) -> BlockResult | None:
        """Phase-2 verification; the winning block is announced."""
        result = self.core.verify_claims(time.time(), time.time)
        if result is not None and result.status in (BlockStatus.CONNECTED, BlockStatus.SIDE_BRANCH):
            self.gossip.publish_block(self.chain.get_block(result.block_hash))
        return result

    # --- the clock ------------------------------------------------------------------------
    def _phase_loop(self) -> None:
        next_sync = 0.0
        while not self._stop.wait(TICK_SECONDS):
            now = time.time()
            try:
                tick = self.core.tick(now)
            except Exception as exc:
                log.exception("tick failed: %s", exc)
                continue
            for reveal in tick.reveals:
                self.gossip.publish("key", encode(reveal))
            if tick.verify_claims:
                self.jobs.put(("verify", None, None))
            self.prefetcher.poll(now)
            if self.pruner is not None and self.pruner.is_due(now):
                self.jobs.put(("prune", None, None))  # in the worker: never while a verification reads the blobs
            if now >= next_sync:
                next_sync = now + SYNC_INTERVAL
                self.sync.request_sync()
