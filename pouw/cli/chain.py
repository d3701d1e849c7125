"""`pouw chain ...`: what the node knows about the chain."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pouw.cli.common import call, format_coins, json_option, make_client, node_options, output, short

from pouw.types import MODE_DESCRIPTIONS


@click.group()
def chain() -> None:
    """Chain: tip, phase and blocks."""


@chain.command("info")
@node_options
@json_option
def info(node_url: str, datadir: Path, as_json: bool) -> None:
    """The node's network, tip, phase and peers."""
    res = call(make_client(node_url, datadir), "getinfo")

    def lines() -> list[str]:
        left = max(0, int(float(res.get("phase_end", 0)) - time.time()))
        return [
            f"network  {res.get('network')} (chain {short(str(res.get('chain_id', '')))})",
            f"height   {res.get('height')}  tip {short(str(res.get('tip', '')))}",
            f"slot     {res.get('slot')}  phase {res.get('phase')} (ends in {left} s)",
            f"peers    {res.get('peers')}",
            f"supply   {format_coins(int(res.get('supply', 0)))} coins",
            f"mempool  {res.get('mempool_size')} transactions",
            f"blobs    {res.get('blob_url')}",
            f"disk     {_disk_line(res)}",
        ]

    output(as_json, res, lines)


def _disk_line(res: dict) -> str:
    """Disk use as `pouw chain info` prints it: the chain database, the blob store, the work cache, pruning or not."""
    disk = res.get("disk") or {}
    parts = ", ".join(f"{name} {format_bytes(int(disk[name]))}" for name in ("chain", "blobs", "work") if name in disk)
    mode = "pruning" if res.get("pruning") else "keeping every blob"
    return f"{parts or 'unknown'} ({mode})"


def format_bytes(n: int) -> str:
    """A byte count for people: 1.2 MB (powers of 1000) and the exact count below 1 kB."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@chain.command("block")
@click.argument("ref")
@node_options
@json_option
def block(ref: str, node_url: str, datadir: Path, as_json: bool) -> None:
    """Show the block at height REF, or with hash REF."""
    key: int | str = int(ref) if ref.isdigit() else ref.lower().removeprefix("0x")
    if isinstance(key, str) and (len(key) != 64 or any(c not in "0123456789abcdef" for c in key)):
        raise click.BadParameter("must be a height or a 64-hex-digit block hash", param_hint="HEIGHT_OR_HASH")
    res = call(make_client(node_url, datadir), "getblock", ref=key)

    def lines() -> list[str]:
        h = res.get("header", {})
        out = [
            f"block {res.get('hash')}",
            f"height {res.get('height')}  slot {h.get('slot')}  confirmations {res.get('confirmations')}",
            f"time   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(int(h.get('timestamp', 0))))}",
            f"miner  {h.get('miner')}",
            f"task   {h.get('task_id')}  mode {MODE_DESCRIPTIONS.get(h.get('task_mode'), h.get('task_mode'))}",
            f"Dice   {int(h.get('dice_ppm', 0)) / 1e6:.4f}",
            f"txs    {len(res.get('transactions', []))}",
        ]
        for tx in res.get("transactions", [])[:20]:
            out.append(f"  {short(str(tx.get('txid', '')))} {tx.get('type')}")
        return out

    output(as_json, res, lines)


def _parse_hash(value: str) -> str:
    value = value.lower().removeprefix("0x")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise click.BadParameter("must be a 64-hex-digit block hash", param_hint="HASH")
    return value


@chain.command("invalidate")
@click.argument("block_hash")
@node_options
@json_option
def invalidate(block_hash: str, node_url: str, datadir: Path, as_json: bool) -> None:
    """Mark block BLOCK_HASH and its descendants invalid and leave them (as bitcoind's invalidateblock).

    For the rare split deeper than the finality window: invalidate this node's
    first block of the split, and it syncs the other side.
    """
    res = call(make_client(node_url, datadir), "invalidateblock", block_hash=_parse_hash(block_hash))
    output(as_json, res, lambda: [f"invalidated {res.get('invalidated')} block(s); tip is now height {res.get('height')} {short(str(res.get('tip')))}"])


@chain.command("reconsider")
@click.argument("block_hash")
@node_options
@json_option
def reconsider(block_hash: str, node_url: str, datadir: Path, as_json: bool) -> None:
    """Undo `invalidate` for BLOCK_HASH: it and its relatives become candidates again (as bitcoind's reconsiderblock)."""
    res = call(make_client(node_url, datadir), "reconsiderblock", block_hash=_parse_hash(block_hash))
    output(as_json, res, lambda: [f"tip is now height {res.get('height')} {short(str(res.get('tip')))}"])
