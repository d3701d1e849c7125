"""`pouw node start`: run a full node until interrupted."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click


DEFAULT_DATADIR = Path.home() / ".pouw"


@click.group()
def node() -> None:
    """Run a full node."""


def _load_params(network: str, params_file: Path | None, datadir: Path):
    from consensus.genesis import make_main_params
    from fullnode.config import load_params_file, save_params

    if params_file is not None:
        params = load_params_file(params_file)
    elif (datadir / "params.json").exists():
        params = load_params_file(datadir / "params.json")
    elif network == "main":
        params = make_main_params()
    else:
        raise click.UsageError(
            "a devnet node needs its network's parameters: pass --params FILE (pouw devnet writes one), "
            "or use --network main"
        )
    save_params(datadir, params)
    return params


def _parse_block_hash(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.lower().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise click.BadParameter("must be a 64-hex-digit block hash", param_hint="--assume-valid")
    return raw


@node.command("start")
@click.option("--datadir", type=click.Path(path_type=Path), default=None, help="Data directory (default ~/.pouw/<network>).")
@click.option("--network", type=click.Choice(["main", "devnet"]), default="main", show_default=True)
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default=None, help="Network parameters file (params.json).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=int, help="libp2p TCP port (0: any).")
@click.option("--rpc-port", default=8645, type=int, show_default=True, help="JSON-RPC port (0: any).")
@click.option("--blob-port", default=0, type=int, help="Blob HTTP port (0: any).")
@click.option("--bootstrap", multiple=True, help="Peer multiaddr to connect to (repeatable).")
@click.option("--assume-valid", "assume_valid", default=None, metavar="HASH",
              help="A block known good: its ancestors buried deeper than the finality window skip the Dice recomputation "
                   "during sync (every other block is fully verified).")
@click.option("--claim-wait", type=float, default=None, help="Seconds into Phase 2 before claims are verified.")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
def start(datadir, network, params_file, host, port, rpc_port, blob_port, bootstrap, assume_valid, claim_wait, as_json) -> None:
    """Start a full node and run it until Ctrl-C or SIGTERM."""
    from fullnode.config import ConfigError, NodeConfig
    from fullnode.node import FullNode
    from pouw.chaindb import StoreError

    datadir = datadir or DEFAULT_DATADIR / network
    datadir.mkdir(parents=True, exist_ok=True)
    out_lock = threading.Lock()

    def emit(message: str) -> None:
        with out_lock:
            if as_json:
                print(json.dumps({"time": round(time.time(), 3), "event": message}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    logging.basicConfig(level=os.environ.get("POUW_LOG", "WARNING"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = _load_params(network, params_file, datadir)
        config = NodeConfig(
            datadir=datadir,
            params=params,
            host=host,
            p2p_port=port,
            rpc_port=rpc_port,
            blob_port=blob_port,
            bootstrap=list(bootstrap),
            assume_valid=_parse_block_hash(assume_valid),
            claim_wait_seconds=claim_wait,
        )
        full_node = FullNode(config, log_fn=emit).start()
    except (ConfigError, StoreError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        emit("stopping")
        full_node.stop()
    sys.exit(0)
