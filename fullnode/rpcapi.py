"""The node's RPC methods (docs/rpc.md): thin views over the node, never new rules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from consensus.clock import get_phase_point
from consensus.forkchoice import compute_confirmations
from consensus.transition import InvalidBlock
from mempool.errors import MempoolReject
from mempool.txpool import decode_transaction
from pouw.blobstore import BlobError
from pouw.encoding import DecodeError, decode, encode
from pouw.rpc import RpcError
from pouw.types import KEY_TEST, KEY_TRAIN, MODE_NO_TRAIN_KEY, Block, Claim, Commit, TaskSubmission, Transfer, get_tx_id

if TYPE_CHECKING:
    from fullnode.node import FullNode

REJECTED = -1
NOT_FOUND = -2
BAD_PARAMS = -32602


def _hex(value: Any, name: str, length: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise RpcError(f"{name} must be hexadecimal", BAD_PARAMS) from None
    if length is not None and len(raw) != length:
        raise RpcError(f"{name} must be {length} bytes", BAD_PARAMS)
    return raw


def tx_to_json(tx) -> dict:
    """A transaction as a person (or script) reads it."""
    base = {"txid": get_tx_id(tx).hex(), "fee": tx.fee, "nonce": tx.nonce}
    if isinstance(tx, Transfer):
        return {**base, "type": "transfer", "from": tx.sender.hex(), "to": tx.recipient.hex(), "amount": tx.amount}
    return {**base, "type": "task", "publisher": tx.publisher.hex(), "reward": tx.reward, "title": tx.title, "task_id": tx.task_id.hex()}


def block_to_json(node: "FullNode", block: Block) -> dict:
    """A block as a person (or script) reads it."""
    h = block.header
    on_best = node.store.get_hash_at(h.height) == block.hash
    work = block.body.work
    return {
        "height": h.height,
        "hash": block.hash.hex(),
        "best_chain": on_best,
        "confirmations": compute_confirmations(node.store.get_headers_after(block.hash), node.params) if on_best else 0,
        "header": {
            "slot": h.slot,
            "prev_hash": h.prev_hash.hex(),
            "timestamp": h.timestamp,
            "size": h.size,
            "task_id": h.task_id.hex(),
            "task_mode": h.task_mode,
            "miner": h.miner.hex(),
            "dice_ppm": h.dice_ppm,
            "body_root": h.body_root.hex(),
            "unselected_root": h.unselected_root.hex(),
        },
        "work": None
        if work is None
        else {
            "model_digest": work.model_digest.hex(),
            "model_size": work.model_size,
            "checkpoints": len(work.checkpoint_digests),
            "links": list(work.links),
        },
        "transactions": [tx_to_json(tx) for tx in block.body.transactions],
        "hex": encode(block).hex(),
    }


def make_handlers(node: "FullNode") -> dict[str, Callable[..., Any]]:
    """The RPC method table of `node`."""
    params = node.params

    def getinfo() -> dict:
        point = get_phase_point(params, time.time())
        status = node.store.state().get_status()
        try:
            peers = len(node.p2p_thread.call_sync(node.p2p.connected_peers)) if node.p2p_thread else 0
        except Exception:
            peers = 0
        with node.lock:
            mempool_size = len(node.txpool)
        return {
            "network": params.name,
            "chain_id": params.chain_id.hex(),
            "height": status.height,
            "tip": status.tip_hash.hex(),
            "slot": point.slot,
            "phase": point.phase,
            "phase_end": point.phase_end,
            "peers": peers,
            "p2p_addrs": node.p2p_addrs(),
            "blob_url": node.blob_server.url if node.blob_server else None,
            "supply": status.supply,
            "state_checksum": node.store.get_meta().state_checksum.hex(),
            "unselected_tasks": len(status.unselected),
            "mempool_size": mempool_size,
            "datadir": str(node.datadir),
        }

    def getparams() -> dict:
        return {"hex": encode(params).hex()}

    def getblock(ref) -> dict:
        if isinstance(ref, int) and not isinstance(ref, bool):
            block = node.store.get_block_at(ref)
        elif isinstance(ref, str) and ref.isdigit():
            block = node.store.get_block_at(int(ref))
        else:
            block = node.store.get_block(_hex(ref, "ref", 32))
        if block is None:
            raise RpcError(f"no block {ref}", NOT_FOUND)
        return block_to_json(node, block)

    def getbalance(address: str) -> dict:
        raw = _hex(address, "address", 32)
        account = node.store.state().get_account(raw)
        with node.lock:
            pending = node.txpool.get_pending_nonce(raw, node.store.state())
        return {"address": address, "balance": account.balance, "nonce": account.nonce, "pending_nonce": pending}

    def sendtx(hex: str) -> dict:
        try:
            tx = decode_transaction(_hex(hex, "hex"), 1 << 20)
        except DecodeError as exc:
            raise RpcError(f"malformed transaction: {exc}", REJECTED) from None
        with node.lock:
            try:
                tx_id = node.txpool.add(tx, node.store.state())
            except MempoolReject as exc:
                raise RpcError(f"transaction rejected: {exc}", REJECTED) from None
        node.publish("tx", encode(tx))
        return {"txid": tx_id.hex()}

    def _task_status(task_id: bytes) -> tuple[str, int | None, TaskSubmission | None, dict | None]:
        # [issue 11] The pool first, then the state: a block that includes the task connects (under the lock,
        # verification and all) before the task leaves the pool, so one of the two always has it.
        with node.lock:
            pending = node.txpool.tasks.get(task_id)
        state = node.store.state()
        record = state.get_task(task_id)
        if record is None:
            return ("pending", None, pending, None) if pending is not None else ("unknown", None, None, None)
        if record.selected_height == 0:
            return "waiting", None, record.submission, None
        entry = state.get_history(record.selected_height)
        if entry is None or entry.task_id != task_id:
            return "scheduled", record.selected_height, record.submission, None
        block = node.store.get_block(entry.block_hash)
        work = block.body.work
        result = {
            "height": entry.height,
            "block_hash": entry.block_hash.hex(),
            "winner": entry.winner.hex(),
            "dice_ppm": entry.dice_ppm,
            "model_digest": entry.model_digest.hex(),
            "checkpoint_digests": [d.hex() for d in work.checkpoint_digests],
            "links": list(work.links),
            "mode": entry.task_mode,
            "paid": entry.paid,
        }
        return ("refunded" if entry.task_mode == MODE_NO_TRAIN_KEY else "mined"), entry.height, record.submission, result

    def listtasks() -> dict:
        state = node.store.state()
        ids = [q.task_id for q in state.get_status().unselected]
        ids += [s.task_id for s in state.get_status().scheduled if s.task_id != params.standing_task.task_id]
        with node.lock:
            ids += [t.task_id for t in node.txpool.tasks.ranked()]
        for height in range(max(1, node.store.tip_height - 200), node.store.tip_height + 1):
            entry = state.get_history(height)
            if entry is not None and entry.task_id != params.standing_task.task_id:
                ids.append(entry.task_id)
        out, seen = [], set()
        for task_id in ids:
            if task_id in seen:
                continue
            seen.add(task_id)
            status, height, sub, _ = _task_status(task_id)
            if sub is not None:
                out.append({"task_id": task_id.hex(), "title": sub.title, "reward": sub.reward, "publisher": sub.publisher.hex(), "status": status, "height": height})
        return {"tasks": out}

    def gettask(task_id: str) -> dict:
        raw = _hex(task_id, "task_id", 32)
        status, height, sub, result = _task_status(raw)
        if sub is None:
            raise RpcError(f"no task {task_id}", NOT_FOUND)
        return {
            "task_id": task_id,
            "title": sub.title,
            "reward": sub.reward,
            "status": status,
            "height": height,
            "submission_hex": encode(sub).hex(),
            "result": result,
        }

    def importblob(path: str) -> dict:
        try:
            digest = node.blobs.put_file(Path(path))
        except (BlobError, OSError) as exc:
            raise RpcError(f"cannot import {path}: {exc}", REJECTED) from None
        return {"digest": digest.hex(), "size": node.blobs.size(digest), "link": f"{node.blob_server.url}/blob/{digest.hex()}"}

    def addtaskkeys(task_id: str, train_key: str, test_key: str) -> dict:
        raw = _hex(task_id, "task_id", 32)
        keys = {KEY_TRAIN: _hex(train_key, "train_key", 32), KEY_TEST: _hex(test_key, "test_key", 32)}
        task = node.get_task(raw)
        if task is None:
            raise RpcError("the node knows no such task (send the submission first)", NOT_FOUND)
        from pouw.blobcrypt import is_key_for

        if not is_key_for(keys[KEY_TRAIN], task.train_blob.key_commitment) or not is_key_for(keys[KEY_TEST], task.test_blob.key_commitment):
            raise RpcError("the keys do not match the task's key commitments", REJECTED)
        node.add_publisher_keys(raw, keys[KEY_TRAIN], keys[KEY_TEST])
        return {}

    def getmininginfo() -> dict:
        return node.mining_info()

    def getblocktemplate() -> dict:
        return {"hex": encode(node.get_block_template()).hex()}

    def submitcommit(hex: str) -> dict:
        try:
            commit = decode(Commit, _hex(hex, "hex"), max_size=4096)
        except DecodeError as exc:
            raise RpcError(f"malformed commit: {exc}", REJECTED) from None
        with node.lock:
            try:
                node.commits.add(commit, now=time.time(), tip_height=node.store.tip_height, expected_task_id=node._expected_work_tasks())
            except MempoolReject as exc:
                raise RpcError(f"commit rejected: {exc}", REJECTED) from None
        node.publish("commit", encode(commit))
        return {"accepted": True}

    def submitclaim(hex: str) -> dict:
        try:
            claim = decode(Claim, _hex(hex, "hex"))
        except DecodeError as exc:
            raise RpcError(f"malformed claim: {exc}", REJECTED) from None
        state = node.store.state()
        if claim.block.header.prev_hash == state.get_status().tip_hash:
            # Check everything but the Dice now, so the miner hears about a bad block at once.
            from consensus.transition import apply_block

            try:
                apply_block(state.child(), claim.block, params)
            except InvalidBlock as exc:
                raise RpcError(f"claim rejected: {exc}", REJECTED) from None
        with node.lock:
            try:
                node.claims.add(claim, now=time.time())
            except MempoolReject as exc:
                raise RpcError(f"claim rejected: {exc}", REJECTED) from None
        node.publish("claim", encode(claim))
        node._request_claim_verification()
        return {"accepted": True}

    return {
        "getinfo": getinfo,
        "getparams": getparams,
        "getblock": getblock,
        "getbalance": getbalance,
        "sendtx": sendtx,
        "listtasks": listtasks,
        "gettask": gettask,
        "importblob": importblob,
        "addtaskkeys": addtaskkeys,
        "getmininginfo": getmininginfo,
        "getblocktemplate": getblocktemplate,
        "submitcommit": submitcommit,
        "submitclaim": submitclaim,
    }
