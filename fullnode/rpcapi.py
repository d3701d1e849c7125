"""The node's RPC methods (docs/rpc.md): thin adapters over the node core, never new rules.

Methods are grouped by job: chain views, wallet, tasks and blobs, mining.
Writes (`sendtx`, `submitcommit`, `submitclaim`) go through the same core
calls as gossip, and are announced to peers when the core accepts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from consensus.clock import PHASE_1, get_phase2_start, get_phase_point, get_slot_start
from consensus.forkchoice import compute_confirmations
from consensus.rules import TASK_PENDING, get_scheduled_task_id, get_task_status, is_standing_task
from mempool.taskpool import compute_task_listing
from mempool.txpool import decode_transaction
from pouw.blobstore import BlobError, BlobStore
from pouw.encoding import DecodeError, decode, encode
from pouw.rpc import RpcError
from pouw.types import KEY_TEST, KEY_TRAIN, Block, Claim, Commit, get_tx_id

from fullnode.core import NodeCore, Verdict
from fullnode.prune import DiskUse
from fullnode.views import tx_to_json

REJECTED = -1
NOT_FOUND = -2
BAD_PARAMS = -32602

MAX_RPC_TX = 1 << 20
"""Largest transaction `sendtx` decodes."""
LISTED_HISTORY = 200
"""`listtasks` shows tasks finished in this many most recent blocks."""


@dataclass
class RpcContext:
    """What the RPC methods may use: the core, the blob store and a few facts and acts of the running node."""

    core: NodeCore
    """The node core."""
    blobs: BlobStore
    """The node's blob store."""
    datadir: Path
    """The node's data directory."""
    blob_url: Callable[[], str | None]
    """Where the node serves blobs over HTTP."""
    p2p_addrs: Callable[[], list[str]]
    """The node's libp2p addresses."""
    peer_count: Callable[[], int]
    """How many peers are connected."""
    announce: Callable[[str, bytes], None]
    """Gossip a message on a topic (tx, commit, claim)."""
    claim_taken: Callable[[float], None]
    """Tell the node a claim was admitted (it may start verification)."""
    pruning: bool = False
    """True when the node prunes blobs (`--prune`), False when it keeps every blob (`--keep-all`)."""


def parse_hex(value: Any, name: str, length: int | None = None) -> bytes:
    """A hex parameter as bytes; -32602 when it is not hex of the right length."""
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise RpcError(f"{name} must be hexadecimal", BAD_PARAMS) from None
    if length is not None and len(raw) != length:
        raise RpcError(f"{name} must be {length} bytes", BAD_PARAMS)
    return raw


def decode_param(cls: type, value: Any, name: str, max_size: int):
    """A hex-encoded protocol object; -1 when it does not decode."""
    try:
        return decode(cls, parse_hex(value, name), max_size=max_size)
    except DecodeError as exc:
        raise RpcError(f"malformed {cls.__name__.lower()}: {exc}", REJECTED) from None


def raise_unless_accepted(verdict: Verdict, what: str) -> None:
    """A refused message becomes RPC error -1 with the core's reason."""
    if not verdict.accepted:
        raise RpcError(f"{what} rejected: {verdict.message or verdict.code}", REJECTED)


# --- JSON views ---------------------------------------------------------------------


def block_to_json(core: NodeCore, block: Block) -> dict:
    """A block as a person (or script) reads it."""
    h = block.header
    chain = core.chain
    on_best = chain.get_hash_at(h.height) == block.hash
    work = block.body.work
    return {
        "height": h.height,
        "hash": block.hash.hex(),
        "best_chain": on_best,
        "confirmations": compute_confirmations(chain.get_headers_after(block.hash), core.params) if on_best else 0,
        "header": {
            "slot": h.slot, "prev_hash": h.prev_hash.hex(), "timestamp": h.timestamp, "size": h.size,
            "task_id": h.task_id.hex(), "task_mode": h.task_mode, "miner": h.miner.hex(), "dice_ppm": h.dice_ppm,
            "body_root": h.body_root.hex(), "unselected_root": h.unselected_root.hex(),
        },
        "work": None if work is None else {
            "model_digest": work.model_digest.hex(), "model_size": work.model_size,
            "checkpoints": len(work.checkpoint_digests), "links": list(work.links),
        },
        "transactions": [tx_to_json(tx) for tx in block.body.transactions],
        "hex": encode(block).hex(),
    }


def task_to_json(core: NodeCore, task_id: bytes) -> dict | None:
    """A published task with its status (one vocabulary: consensus.rules.TASK_*), or None if unknown.

    The chain and the mempool are read under the core's lock, so a task that
    a block just took out of the mempool is found in the chain, never lost
    between the two.
    """
    with core.lock:
        status = get_task_status(core.chain.state(), task_id)
        pending = core.txpool.tasks.get(task_id) if status.record is None else None
    if status.record is None:
        if pending is None:
            return None
        return {"task_id": task_id.hex(), "title": pending.title, "reward": pending.reward, "publisher": pending.publisher.hex(),
                "status": TASK_PENDING, "height": None, "submission_hex": encode(pending).hex(), "result": None}
    sub = status.record.submission
    result = None
    if status.history is not None:
        entry = status.history
        work = core.chain.get_block(entry.block_hash).body.work
        result = {
            "height": entry.height, "block_hash": entry.block_hash.hex(), "winner": entry.winner.hex(),
            "dice_ppm": entry.dice_ppm, "model_digest": entry.model_digest.hex(),
            "checkpoint_digests": [d.hex() for d in work.checkpoint_digests], "links": list(work.links),
            "mode": entry.task_mode, "paid": entry.paid,
        }
    return {"task_id": task_id.hex(), "title": sub.title, "reward": sub.reward, "publisher": sub.publisher.hex(),
            "status": status.status, "height": status.height or None, "submission_hex": encode(sub).hex(), "result": result}


def compute_mining_info(core: NodeCore, now: float, blob_url: str | None) -> dict:
    """What a miner needs to mine the next block (docs/rpc.md): keys on chain and keys seen, slots, tasks."""
    params = core.params
    with core.lock:
        status = core.chain.state().get_status()
        task_id = get_scheduled_task_id(status)
        next_id = status.scheduled[1].task_id
        test_key = core.keys.get(task_id, KEY_TEST)
        next_train_key = core.keys.get(next_id, KEY_TRAIN)
    point = get_phase_point(params, now)
    slot = max(point.slot, status.min_slot)

    def task_info(tid: bytes) -> dict:
        standing = is_standing_task(params, tid)
        task = None if standing else core.get_task(tid)
        return {"task_id": tid.hex(), "standing": standing, "task_hex": None if task is None else encode(task).hex()}

    return {
        "height": status.height + 1,
        "prev_hash": status.tip_hash.hex(),
        "slot": slot,
        "min_slot": status.min_slot,
        "phase": point.phase if slot == point.slot else PHASE_1,
        "phase_start": point.phase_start if slot == point.slot else float(get_slot_start(params, slot)),
        "phase_end": point.phase_end if slot == point.slot else float(get_phase2_start(params, slot)),
        "slot_start": float(get_slot_start(params, slot)),
        "slot_phase2_start": float(get_phase2_start(params, slot)),
        **task_info(task_id),
        "train_key": status.train_key.hex() if status.train_key else None,
        "test_key": None if test_key is None else test_key.hex(),
        "next": {"height": status.height + 2, **task_info(next_id),
                 "train_key": None if next_train_key is None else next_train_key.hex()},
        "blob_url": blob_url,
    }


# --- the methods, by job ------------------------------------------------------------------


def chain_methods(ctx: RpcContext) -> dict[str, Callable[..., Any]]:
    """getinfo, getparams, getblock."""
    core, params = ctx.core, ctx.core.params
    disk = DiskUse(ctx.datadir, ctx.blobs.root)

    def getinfo() -> dict:
        point = get_phase_point(params, time.time())
        status = core.chain.state().get_status()
        with core.lock:
            mempool_size = len(core.txpool)
        return {
            "network": params.name, "chain_id": params.chain_id.hex(), "height": status.height,
            "tip": status.tip_hash.hex(), "slot": point.slot, "phase": point.phase, "phase_end": point.phase_end,
            "peers": ctx.peer_count(), "p2p_addrs": ctx.p2p_addrs(), "blob_url": ctx.blob_url(),
            "supply": status.supply, "state_checksum": core.chain.get_meta().state_checksum.hex(),
            "unselected_tasks": len(status.unselected), "mempool_size": mempool_size, "datadir": str(ctx.datadir),
            "pruning": ctx.pruning, "disk": disk.get(),
        }

    def getparams() -> dict:
        return {"hex": encode(params).hex()}

    def getblock(ref) -> dict:
        if isinstance(ref, int) and not isinstance(ref, bool):
            block = core.chain.get_block_at(ref)
        elif isinstance(ref, str) and ref.isdigit():
            block = core.chain.get_block_at(int(ref))
        else:
            block = core.chain.get_block(parse_hex(ref, "ref", 32))
        if block is None:
            raise RpcError(f"no block {ref}", NOT_FOUND)
        return block_to_json(core, block)

    def invalidateblock(block_hash: str) -> dict:
        """The operator's invalidateblock: leave a block and its descendants (for splits deeper than the finality window)."""
        try:
            activation = core.invalidate_block(parse_hex(block_hash, "block_hash", 32))
        except LookupError as exc:
            raise RpcError(str(exc), NOT_FOUND) from None
        except ValueError as exc:
            raise RpcError(str(exc), BAD_PARAMS) from None
        return {"invalidated": len(activation.disconnected) or 1, "height": core.chain.tip_height, "tip": core.chain.tip_hash.hex()}

    def reconsiderblock(block_hash: str) -> dict:
        """The operator's reconsiderblock: make an invalidated block and its relatives candidates again."""
        try:
            core.reconsider_block(parse_hex(block_hash, "block_hash", 32))
        except LookupError as exc:
            raise RpcError(str(exc), NOT_FOUND) from None
        return {"height": core.chain.tip_height, "tip": core.chain.tip_hash.hex()}

    return {"getinfo": getinfo, "getparams": getparams, "getblock": getblock,
            "invalidateblock": invalidateblock, "reconsiderblock": reconsiderblock}


def wallet_methods(ctx: RpcContext) -> dict[str, Callable[..., Any]]:
    """getbalance, sendtx."""
    core = ctx.core

    def getbalance(address: str) -> dict:
        raw = parse_hex(address, "address", 32)
        with core.lock:
            state = core.chain.state()
            account = state.get_account(raw)
            pending = core.txpool.get_pending_nonce(raw, state)
        return {"address": address, "balance": account.balance, "nonce": account.nonce, "pending_nonce": pending,
                "bonded": account.bonded, "unbonding": account.unbonding, "unbond_height": account.unbond_height}

    def sendtx(hex: str) -> dict:
        try:
            tx = decode_transaction(parse_hex(hex, "hex"), MAX_RPC_TX)
        except DecodeError as exc:
            raise RpcError(f"malformed transaction: {exc}", REJECTED) from None
        raise_unless_accepted(core.submit_transaction(tx, time.time()), "transaction")
        ctx.announce("tx", encode(tx))
        return {"txid": get_tx_id(tx).hex()}

    return {"getbalance": getbalance, "sendtx": sendtx}


def task_methods(ctx: RpcContext) -> dict[str, Callable[..., Any]]:
    """listtasks, gettask, importblob, addtaskkeys."""
    core = ctx.core

    def listtasks() -> dict:
        """Coming heights (the standing task too), the queue and the mempool in selection order, then recent results."""
        keys = ("task_id", "title", "reward", "publisher", "status", "height")
        with core.lock:
            rows = compute_task_listing(core.chain.state(), core.txpool.tasks, core.params)
        out, seen = [], set()
        for row in rows:
            if is_standing_task(core.params, row.task_id):
                out.append({"task_id": row.task_id.hex(), "title": row.title, "reward": 0, "publisher": "",
                            "status": row.status, "height": row.height})
                continue
            seen.add(row.task_id)
            view = task_to_json(core, row.task_id)
            if view is not None:
                out.append({k: view[k] for k in keys})
        state, tip = core.chain.state(), core.chain.tip_height
        for height in range(tip, max(0, tip - LISTED_HISTORY), -1):
            entry = state.get_history(height)
            if entry is None or is_standing_task(core.params, entry.task_id) or entry.task_id in seen:
                continue
            seen.add(entry.task_id)
            out.append({k: task_to_json(core, entry.task_id)[k] for k in keys})
        return {"tasks": out}

    def gettask(task_id: str) -> dict:
        view = task_to_json(core, parse_hex(task_id, "task_id", 32))
        if view is None:
            raise RpcError(f"no task {task_id}", NOT_FOUND)
        return view

    def importblob(path: str) -> dict:
        try:
            digest = ctx.blobs.put_file(Path(path))
        except (BlobError, OSError) as exc:
            raise RpcError(f"cannot import {path}: {exc}", REJECTED) from None
        return {"digest": digest.hex(), "size": ctx.blobs.size(digest), "link": f"{ctx.blob_url()}/blob/{digest.hex()}"}

    def addtaskkeys(task_id: str, train_key: str, test_key: str) -> dict:
        raw = parse_hex(task_id, "task_id", 32)
        try:
            core.add_publisher_keys(raw, parse_hex(train_key, "train_key", 32), parse_hex(test_key, "test_key", 32))
        except LookupError as exc:
            raise RpcError(str(exc), NOT_FOUND) from None
        except ValueError as exc:
            raise RpcError(str(exc), REJECTED) from None
        return {}

    return {"listtasks": listtasks, "gettask": gettask, "importblob": importblob, "addtaskkeys": addtaskkeys}


def mining_methods(ctx: RpcContext) -> dict[str, Callable[..., Any]]:
    """getmininginfo, getblocktemplate, submitcommit, submitclaim."""
    core = ctx.core

    def getmininginfo() -> dict:
        return compute_mining_info(core, time.time(), ctx.blob_url())

    def getblocktemplate() -> dict:
        return {"hex": encode(core.get_block_template()).hex()}

    def submitcommit(hex: str) -> dict:
        commit = decode_param(Commit, hex, "hex", 4096)
        raise_unless_accepted(core.submit_commit(commit, time.time()), "commit")
        ctx.announce("commit", encode(commit))
        return {"accepted": True}

    def submitclaim(hex: str) -> dict:
        claim = decode_param(Claim, hex, "hex", core.params.max_block_size + 65536)
        now = time.time()
        raise_unless_accepted(core.submit_claim(claim, now), "claim")
        ctx.announce("claim", encode(claim))
        ctx.claim_taken(now)
        return {"accepted": True}

    return {"getmininginfo": getmininginfo, "getblocktemplate": getblocktemplate,
            "submitcommit": submitcommit, "submitclaim": submitclaim}


def make_handlers(ctx: RpcContext) -> dict[str, Callable[..., Any]]:
    """The node's RPC method table."""
    return {**chain_methods(ctx), **wallet_methods(ctx), **task_methods(ctx), **mining_methods(ctx)}
