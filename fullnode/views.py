"""Read-only views of the chain for the explorer: plain dicts, ready for JSON.

Every function takes a *chain view* (anything with the methods of
`ChainView`, such as pouw.store.ChainStore) and the chain parameters, never
the node, and only reads. Anyone who can reach the explorer's port calls
these, so each one bounds its work: pages hold at most MAX_PAGE rows, a
block lists at most MAX_TRANSACTIONS transactions per page, the
leaderboard looks back at most LEADERBOARD_WINDOW blocks and is computed
once per tip, and task figures are computed by one worker at a time and
cached on disk (`FigureCache`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from consensus.clock import PHASE_1, get_phase_point
from consensus.rules import TASK_MINED, get_task_status, is_high_accuracy, is_standing_task
from consensus.state import State
from pouw.blobstore import BlobStore
from pouw.seg.checkpoints import get_checkpoint_part_digests
from pouw.types import (
    DICE_SCALE,
    KEY_TEST,
    KEY_TRAIN,
    MODE_DESCRIPTIONS,
    MODE_NO_TEST_KEY,
    Block,
    ChainParams,
    Bond,
    TaskSubmission,
    Transfer,
    get_tx_id,
    get_tx_sender,
)

log = logging.getLogger("pouw.explorer")

MAX_PAGE = 50
"""Most rows of a block, task or leaderboard page."""
MAX_TRANSACTIONS = 100
"""Most transactions shown per page of one block."""
MAX_CONFIRMATIONS = 100
"""Confirmations are counted up to this many (the walk is bounded)."""
LEADERBOARD_WINDOW = 10_000
"""The leaderboard counts the blocks of this many heights below the tip."""
RECENT_TASK_WINDOW = 200
"""Mined tasks are listed from this many heights below the tip."""
MAX_CURVE_CHECKPOINTS = 30
"""The Dice-per-epoch plot scores at most this many checkpoints (evenly spread, the last included)."""
MAX_CURVE_CASES = 32
"""The plot scores checkpoints on at most this many test cases."""
MAX_OVERLAYS = 4
"""Overlay figures drawn per task."""
MAX_QUEUED_FIGURES = 8
"""Tasks whose figures may wait for the worker at once; more are told to come back later."""



class ChainView(Protocol):
    """What the views read: the methods of the node's chain store."""

    @property
    def tip_height(self) -> int: ...

    @property
    def tip_hash(self) -> bytes: ...

    def get_block(self, block_hash: bytes) -> Block | None: ...

    def get_block_at(self, height: int) -> Block | None: ...

    def get_hash_at(self, height: int) -> bytes | None: ...

    def get_index(self, block_hash: bytes): ...

    def state(self) -> State: ...


class NotFound(LookupError):
    """The block or task asked for is not in this node's chain."""


class BadRequest(ValueError):
    """A malformed reference or page argument."""


# --- small helpers --------------------------------------------------------------


def parse_hash(text: str, what: str) -> bytes:
    """A 32-byte hash from 64 hex digits."""
    if len(text) != 64:
        raise BadRequest(f"{what} must be 64 hexadecimal digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadRequest(f"{what} must be 64 hexadecimal digits") from None


def parse_count(text: str | None, what: str, default: int, most: int) -> int:
    """A non-negative page argument, at most `most`."""
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 12:
        raise BadRequest(f"{what} must be a non-negative integer")
    return min(int(text), most)


def _task_title(task_id: bytes, state: State, params: ChainParams) -> str:
    if is_standing_task(params, task_id):
        return "standing task"
    record = state.get_task(task_id)
    return record.submission.title if record is not None else ""


def _task_reward(task_id: bytes, state: State, params: ChainParams) -> int:
    record = None if is_standing_task(params, task_id) else state.get_task(task_id)
    return record.submission.reward if record is not None else 0


# --- chain summary ----------------------------------------------------------------


def get_summary(chain: ChainView, params: ChainParams, now: float) -> dict:
    """Tip, phase and countdown, supply and what comes next."""
    state = chain.state()
    status = state.get_status()
    point = get_phase_point(params, now)
    before_genesis = now < params.genesis_time
    return {
        "network": params.name,
        "chain_id": params.chain_id.hex(),
        "now": now,
        "height": status.height,
        "tip": status.tip_hash.hex(),
        "genesis_time": params.genesis_time,
        "before_genesis": before_genesis,
        "slot": point.slot,
        "phase": point.phase,
        "phase_name": ("training and commits" if point.phase == PHASE_1 else "claims and verification"),
        "phase_start": float(params.genesis_time) if before_genesis else point.phase_start,
        "phase_end": float(params.genesis_time) if before_genesis else point.phase_end,
        "phase1_seconds": params.phase1_seconds,
        "phase2_seconds": params.phase2_seconds,
        "supply": status.supply,
        "waiting_tasks": len(status.unselected),
        "next": [
            {
                "height": s.height,
                "task_id": s.task_id.hex(),
                "standing": is_standing_task(params, s.task_id),
                "title": _task_title(s.task_id, state, params),
            }
            for s in status.scheduled
        ],
    }


# --- blocks ----------------------------------------------------------------------------


def summarize_block(block: Block, state: State, params: ChainParams) -> dict:
    """One row of the block list: height, task, mode, winner, Dice, what the winner was paid."""
    h = block.header
    entry = state.get_history(h.height) if h.height > 0 else None
    best = entry is not None and entry.block_hash == block.hash
    return {
        "height": h.height,
        "hash": block.hash.hex(),
        "slot": h.slot,
        "timestamp": h.timestamp,
        "task_id": h.task_id.hex(),
        "standing": is_standing_task(params, h.task_id),
        "title": "genesis" if h.height == 0 else _task_title(h.task_id, state, params),
        "mode": h.task_mode,
        "mode_name": MODE_DESCRIPTIONS.get(h.task_mode, str(h.task_mode)),
        "winner": h.miner.hex(),
        "dice_ppm": h.dice_ppm,
        "dice": h.dice_ppm / DICE_SCALE,
        "high_accuracy": is_high_accuracy(h, params),
        "task_reward": _task_reward(h.task_id, state, params) if h.height > 0 else 0,
        "paid": entry.paid if best else None,
        "transactions": len(block.body.transactions),
        "best_chain": best or h.height == 0,
    }


def list_blocks(chain: ChainView, params: ChainParams, before: int | None = None, limit: int = 20) -> dict:
    """Best-chain blocks below height `before` (default: from the tip down), newest first, at most MAX_PAGE."""
    state = chain.state()
    tip = state.get_status().height
    top = tip if before is None else min(tip, before - 1)
    limit = max(0, min(limit, MAX_PAGE))
    rows = []
    for height in range(top, max(0, top - limit), -1):
        block = chain.get_block_at(height)
        if block is not None:
            rows.append(summarize_block(block, state, params))
    return {"height": tip, "blocks": rows, "more": top - limit > 0}


def tx_to_json(tx) -> dict:
    """A transaction as a person (or script) reads it: the same for RPC and the explorer."""
    base = {"txid": get_tx_id(tx).hex(), "from": get_tx_sender(tx).hex(), "fee": tx.fee, "nonce": tx.nonce}
    if isinstance(tx, Transfer):
        return {**base, "type": "transfer", "to": tx.recipient.hex(), "amount": tx.amount}
    if isinstance(tx, TaskSubmission):
        return {**base, "type": "task", "publisher": tx.publisher.hex(), "task_id": tx.task_id.hex(),
                "reward": tx.reward, "amount": tx.reward, "title": tx.title}
    return {**base, "type": "bond" if isinstance(tx, Bond) else "unbond", "amount": tx.amount}


def _count_confirmations(chain: ChainView, params: ChainParams, height: int, tip: int) -> int:
    """High-accuracy blocks after `height` on the best chain, counted up to MAX_CONFIRMATIONS."""
    count = 0
    for h in range(height + 1, tip + 1):
        block = chain.get_block_at(h)
        if block is not None and is_high_accuracy(block, params):
            count += 1
            if count >= MAX_CONFIRMATIONS:
                break
    return count


def find_block(chain: ChainView, ref: str) -> Block:
    """A block by decimal height (best chain) or by 64-hex hash (any stored block)."""
    if ref.isdigit() and len(ref) <= 12:
        block = chain.get_block_at(int(ref))
    else:
        block = chain.get_block(parse_hash(ref, "block reference"))
    if block is None:
        raise NotFound(f"no block {ref}")
    return block


def get_block_view(chain: ChainView, params: ChainParams, ref: str, tx_offset: int = 0) -> dict:
    """A block page: its row, header, work, key reveals and one page of its transactions."""
    block = find_block(chain, ref)
    state = chain.state()
    tip = state.get_status().height
    h, body = block.header, block.body
    row = summarize_block(block, state, params)
    txs = body.transactions[tx_offset:tx_offset + MAX_TRANSACTIONS]
    work = body.work
    next_hash = chain.get_hash_at(h.height + 1) if row["best_chain"] else None
    return {
        **row,
        "prev_hash": h.prev_hash.hex(),
        "next_hash": next_hash.hex() if next_hash else None,
        "depth": tip - h.height + 1 if row["best_chain"] else 0,
        "confirmations": _count_confirmations(chain, params, h.height, tip) if row["best_chain"] else 0,
        "confirmations_capped": MAX_CONFIRMATIONS,
        "size": h.size,
        "body_root": h.body_root.hex(),
        "unselected_root": h.unselected_root.hex(),
        "key_reveals": ["training" if r.which == KEY_TRAIN else "test" for r in body.key_reveals],
        "work": None if work is None else {
            "model_digest": work.model_digest.hex(),
            "model_size": work.model_size,
            "checkpoints": len(work.checkpoint_digests),
            "links": list(work.links),
            "claimed_dice_ppm": work.dice_ppm,
        },
        "tx_offset": tx_offset,
        "tx_page": [tx_to_json(tx) for tx in txs],
    }


# --- tasks ---------------------------------------------------------------------------------


def _spec_json(sub: TaskSubmission) -> dict:
    m, t = sub.model, sub.train
    return {
        "architecture": m.architecture,
        "in_channels": m.in_channels,
        "num_classes": m.num_classes,
        "base_filters": m.base_filters,
        "patch_size": list(m.patch_size),
        "preprocess": m.preprocess,
        "learning_rate": t.learning_rate,
        "batch_size": t.batch_size,
        "loss": t.loss,
        "optimizer": t.optimizer,
        "max_epochs": t.max_epochs,
    }


def get_task_view(chain: ChainView, params: ChainParams, task_ref: str) -> dict:
    """A task page: what it asks for, where it stands, and its result once mined."""
    task_id = parse_hash(task_ref, "task id")
    if is_standing_task(params, task_id):
        st = params.standing_task
        return {
            "task_id": task_ref, "standing": True, "title": "standing task", "status": "standing", "reward": 0,
            "note": f"mined whenever no task waits: {st.train_count} training and {st.test_count} test images, "
                    "synthetic, new for every block",
        }
    state = chain.state()
    record = state.get_task(task_id)
    if record is None:
        raise NotFound(f"the chain has no task {task_ref} (a task shows here once a block includes it)")
    sub = record.submission
    task_status = get_task_status(state, task_id)
    status, height = task_status.status, task_status.height or None
    out = {
        "task_id": task_ref,
        "standing": False,
        "title": sub.title,
        "status": status,
        "height": height,
        "reward": sub.reward,
        "escrow": record.escrow,
        "fee": sub.fee,
        "publisher": sub.publisher.hex(),
        "submitted_height": record.submitted_height,
        "spec": _spec_json(sub),
        "train_blob": {"digest": sub.train_blob.digest.hex(), "size": sub.train_blob.size},
        "test_blob": {"digest": sub.test_blob.digest.hex(), "size": sub.test_blob.size},
        "result": None,
    }
    if task_status.history is not None:
        entry = task_status.history
        block = chain.get_block(entry.block_hash)
        work = block.body.work if block is not None else None
        out["result"] = {
            "height": entry.height,
            "block_hash": entry.block_hash.hex(),
            "winner": entry.winner.hex(),
            "dice_ppm": entry.dice_ppm,
            "dice": entry.dice_ppm / DICE_SCALE,
            "mode": entry.task_mode,
            "mode_name": MODE_DESCRIPTIONS.get(entry.task_mode, str(entry.task_mode)),
            "paid": entry.paid,
            "model_digest": entry.model_digest.hex(),
            "epochs": max(0, len(work.checkpoint_digests) - 1) if work is not None else None,
        }
    return out


def list_tasks(chain: ChainView, params: ChainParams, limit: int = 20) -> dict:
    """Tasks scheduled next, waiting (best first), and mined in the last RECENT_TASK_WINDOW heights (newest first)."""
    state = chain.state()
    status = state.get_status()
    limit = max(0, min(limit, MAX_PAGE))
    ids: list[bytes] = [s.task_id for s in status.scheduled if not is_standing_task(params, s.task_id)]
    ids += [q.task_id for q in status.unselected[:limit]]
    for height in range(status.height, max(0, status.height - RECENT_TASK_WINDOW), -1):
        if len(ids) >= 2 * limit + 2:
            break
        entry = state.get_history(height)
        if entry is not None and not is_standing_task(params, entry.task_id):
            ids.append(entry.task_id)
    rows, seen = [], set()
    for task_id in ids:
        if task_id in seen or len(rows) >= limit:
            continue
        seen.add(task_id)
        record = state.get_task(task_id)
        if record is None:
            continue
        task_status = get_task_status(state, task_id)
        entry = task_status.history
        rows.append({
            "task_id": task_id.hex(),
            "title": record.submission.title,
            "reward": record.submission.reward,
            "status": task_status.status,
            "height": task_status.height or None,
            "dice": entry.dice_ppm / DICE_SCALE if entry is not None else None,
        })
    return {"tasks": rows, "waiting": len(status.unselected)}


# --- leaderboard ----------------------------------------------------------------------------------


class Leaderboard:
    """Miners ranked by blocks won over the last LEADERBOARD_WINDOW heights; computed once per tip."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tip: bytes | None = None
        self._rows: list[dict] = []
        self._first = 0

    def get(self, chain: ChainView, params: ChainParams, limit: int = 20) -> dict:
        """The top `limit` miners (blocks won, coins earned, best Dice)."""
        state = chain.state()
        status = state.get_status()
        with self._lock:  # concurrent callers wait for one computation instead of each doing it
            if self._tip != status.tip_hash:
                self._rows, self._first = compute_leaderboard(state, status.height)
                self._tip = status.tip_hash
            rows, first = self._rows, self._first
        return {"height": status.height, "from_height": first, "miners": rows[: max(0, min(limit, MAX_PAGE))]}


def compute_leaderboard(state: State, tip_height: int) -> tuple[list[dict], int]:
    """(rows best first, first height counted) over the last LEADERBOARD_WINDOW heights of `state`."""
    first = max(1, tip_height - LEADERBOARD_WINDOW + 1)
    miners: dict[bytes, dict] = {}
    for height in range(first, tip_height + 1):
        entry = state.get_history(height)
        if entry is None:
            continue
        row = miners.setdefault(entry.winner, {"miner": entry.winner.hex(), "blocks": 0, "earned": 0,
                                               "best_dice_ppm": 0, "last_height": 0})
        row["blocks"] += 1
        row["earned"] += entry.paid
        row["best_dice_ppm"] = max(row["best_dice_ppm"], entry.dice_ppm)
        row["last_height"] = height
    rows = sorted(miners.values(), key=lambda r: (-r["blocks"], -r["earned"], r["miner"]))
    for row in rows:
        row["best_dice"] = row["best_dice_ppm"] / DICE_SCALE
    return rows, first


# --- task figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureJob:
    """What drawing one task's figures needs, all read from the chain."""

    task: TaskSubmission
    """The task (its model spec and blobs)."""
    block: Block
    """The block that mined it (model, checkpoints)."""
    keys: dict
    """The task's revealed keys, as the chain carried them (training key in the parent, test key in the block)."""


def get_figure_job(chain: ChainView, params: ChainParams, task_id: bytes) -> FigureJob | str:
    """The job for a mined task, or why there is none (its status, or "standing")."""
    if is_standing_task(params, task_id):
        return "standing"
    state = chain.state()
    task_status = get_task_status(state, task_id)
    if task_status.status != TASK_MINED:
        return task_status.status
    block = chain.get_block(task_status.history.block_hash)
    parent = chain.get_block(block.header.prev_hash) if block is not None else None
    if block is None or parent is None or block.body.work is None:
        return "unknown"
    keys = {r.which: r.key for r in parent.body.key_reveals + block.body.key_reveals if r.task_id == task_id}
    return FigureJob(task_status.record.submission, block, keys)


def select_checkpoints(count: int, most: int = MAX_CURVE_CHECKPOINTS) -> list[int]:
    """Indices of at most `most` checkpoints out of `count`, evenly spread, first and last included."""
    if count <= most:
        return list(range(count))
    step = (count - 1) / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def get_needed_blobs(job: FigureJob, blobs: BlobStore) -> dict[str, list[bytes]]:
    """The blobs the figures read, by what they are: the checkpoints' headers and, for those held, their weights."""
    work = job.block.body.work
    mode = job.block.header.task_mode
    score_blob = job.task.train_blob if mode == MODE_NO_TEST_KEY else job.task.test_blob
    checkpoints = [work.checkpoint_digests[i] for i in select_checkpoints(len(work.checkpoint_digests))]
    weights = [parts[0] for parts in (get_checkpoint_part_digests(blobs, d) for d in checkpoints) if parts]
    return {"model": [work.model_digest], "checkpoints": checkpoints + weights, "dataset": [score_blob.digest]}


class FigureCache:
    """Task figures (Dice per epoch, overlays) drawn from blobs the node holds, by one worker, cached on disk.

    Layout: `<root>/<task id>/figures.json` (written last: its presence
    means done) beside the PNGs it names; `<root>/work/` is scratch space for
    decrypted data, emptied after each job.
    """

    def __init__(self, blobs, root: Path):
        self.blobs = blobs
        self.root = Path(root)
        self._lock = threading.Lock()
        self._queue: list[FigureJob] = []
        self._running: bytes | None = None
        self._failed: dict[bytes, str] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "FigureCache":
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="pouw-explorer-figures", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker (a figure being drawn finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(60)

    def folder(self, task_id: bytes) -> Path:
        """Where a task's figures are kept."""
        return self.root / task_id.hex()

    def get(self, chain: ChainView, params: ChainParams, task_ref: str) -> dict:
        """The figures of a task, or where they stand: ready, queued, drawing, missing-blobs, failed, or not mined."""
        task_id = parse_hash(task_ref, "task id")
        done = self._read_done(task_id)
        if done is not None:
            return {"state": "ready", **done}
        job = get_figure_job(chain, params, task_id)
        if isinstance(job, str):
            if job == "unknown":
                raise NotFound(f"the chain has no task {task_ref}")
            return {"state": "none", "reason": _NO_FIGURE_REASONS.get(job, job)}
        missing = {what: [d.hex() for d in digests if not self.blobs.has(d)] for what, digests in get_needed_blobs(job, self.blobs).items()}
        missing = {what: digests for what, digests in missing.items() if digests}
        if missing:
            return {"state": "missing-blobs", "missing": missing,
                    "reason": "this node does not hold the " + " and ".join(missing) + " blobs of the winning block, "
                              "so it cannot draw the figures (a node that verified the block, or the publisher's node, holds them)"}
        with self._lock:
            if task_id in self._failed:
                return {"state": "failed", "reason": self._failed[task_id]}
            if self._running == task_id:
                return {"state": "drawing"}
            if all(j.task.task_id != task_id for j in self._queue):
                if len(self._queue) >= MAX_QUEUED_FIGURES:
                    return {"state": "busy", "reason": "the explorer is drawing other tasks' figures; try again soon"}
                self._queue.append(job)
                self._wake.set()
            return {"state": "queued", "position": next(i for i, j in enumerate(self._queue) if j.task.task_id == task_id)}

    def get_file(self, task_ref: str, name: str) -> Path:
        """A PNG of a task's finished figures (only names its figures.json lists)."""
        task_id = parse_hash(task_ref, "task id")
        done = self._read_done(task_id)
        names = {f["file"] for f in (done or {}).get("figures", [])}
        if name not in names:
            raise NotFound(f"no figure {name} for task {task_ref}")
        return self.folder(task_id) / name

    def _read_done(self, task_id: bytes) -> dict | None:
        try:
            return json.loads((self.folder(task_id) / "figures.json").read_text())
        except (OSError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        break
                    job = self._queue[0]
                    self._running = job.task.task_id
                try:
                    self._draw(job)
                except Exception as exc:  # a bad blob or dataset must not kill the worker
                    log.warning("figures of task %s failed: %s", job.task.task_id.hex()[:12], exc)
                    with self._lock:
                        self._failed[job.task.task_id] = f"{type(exc).__name__}: {exc}"
                finally:
                    with self._lock:
                        self._queue.pop(0)
                        self._running = None

    def _draw(self, job: FigureJob) -> None:
        """Decrypt the scoring split with the revealed key, score checkpoints, draw, write figures.json last."""
        from consensus.work import load_task_split
        from pouw.seg.report import compute_dice_per_checkpoint, write_dice_plot_png, write_prediction_overlays

        started = time.monotonic()
        task, block = job.task, job.block
        mode = block.header.task_mode
        which = KEY_TRAIN if mode == MODE_NO_TEST_KEY else KEY_TEST
        keys = job.keys
        folder = self.folder(task.task_id)
        scratch = self.root / "work" / task.task_id.hex()
        staging = self.root / "work" / f"{task.task_id.hex()}-out"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            dataset = load_task_split(task, which, keys[which], self.blobs, scratch)
            work = block.body.work
            model_file = self.blobs.get_bytes(work.model_digest)
            overlays = write_prediction_overlays(staging, model_file, task.model, dataset, MAX_OVERLAYS)
            picked = select_checkpoints(len(work.checkpoint_digests))
            cases = dataset.subset(range(min(MAX_CURVE_CASES, len(dataset))))
            curve = compute_dice_per_checkpoint(self.blobs, [work.checkpoint_digests[i] for i in picked], task.model, cases)
            split = "training" if which == KEY_TRAIN else "test"
            label = f"{split} Dice" + (f" ({len(cases)} of {len(dataset)} cases)" if len(cases) < len(dataset) else "")
            write_dice_plot_png(staging / "dice.png", {label: list(zip(picked, curve))},
                                title=f"task {task.task_id.hex()[:12]}: Dice per epoch of the winning model")
            figures = [{"file": "dice.png", "kind": "dice", "caption": f"{label} of each checkpoint, epoch 0 first"}]
            figures += [{"file": p.name, "kind": "overlay", "caption": p.stem.removesuffix("_overlay")} for p in overlays]
            doc = {"figures": figures, "split": split, "cases": len(dataset), "seconds": round(time.monotonic() - started, 2)}
            (staging / "figures.json").write_text(json.dumps(doc))
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)


_NO_FIGURE_REASONS = {
    "waiting": "the task waits to be selected; its figures come once a block mines it",
    "scheduled": "the task is scheduled for a coming block; its figures come once that block is mined",
    "forfeited": "its training key never reached the chain: no model was trained on this task (part of the escrow burned)",
    "expired": "its slot passed without a block, so its test set may be public: no model was scored on it (refunded)",
    "standing": "the standing task's images are new for every block: see each block instead",
}


__all__ = [
    "BadRequest", "ChainView", "FigureCache", "Leaderboard", "NotFound", "find_block", "get_block_view",
    "get_summary", "get_task_view", "list_blocks", "list_tasks", "select_checkpoints",
]
