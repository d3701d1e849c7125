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

from fullnode.config import NETWORKS

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


def _parse_verify_options(device: str, workers: object) -> tuple[str, int]:
    """--verify-device and --verify-workers, checked; "auto" sized to this machine."""
    from fullnode.config import is_device_name
    from fullnode.verification import get_default_verify_workers

    if not is_device_name(device):
        raise click.BadParameter("must be cpu or cuda:N", param_hint="--verify-device")
    if device != "cpu":
        import torch

        index = int(device.split(":")[1])
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise click.BadParameter(f"{device} is not a GPU this machine has", param_hint="--verify-device")
    if workers == "auto":
        return device, get_default_verify_workers(device)
    text = str(workers)
    if not text.isdigit() or int(text) > 1024:
        raise click.BadParameter("must be a number from 0 to 1024, or auto", param_hint="--verify-workers")
    return device, int(text)


def get_conf_key(param: click.Parameter) -> str | None:
    """The pouw.conf key of a `pouw node start` option: its long flag without the dashes."""
    longs = [opt[2:] for opt in getattr(param, "opts", ()) if opt.startswith("--")]
    return longs[0] if longs else None


def apply_conf(ctx: click.Context, opts: dict, conf: dict) -> dict:
    """`opts` with every option not given on the command line taken from `conf` (flags win)."""
    from click.core import ParameterSource

    merged = dict(opts)
    for param in ctx.command.params:
        key = get_conf_key(param)
        if key not in conf or ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            continue
        value = conf[key]
        merged[param.name] = tuple(value) if isinstance(value, list) else value
    return merged


@node.command("start")
@click.option("--datadir", type=click.Path(path_type=Path), default=None, help="Data directory (default ~/.pouw/<network>).")
@click.option("--conf", "conf_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Settings file (default DATADIR/pouw.conf; `key = value` lines, the keys are these options' names).")
@click.option("--network", type=click.Choice(NETWORKS), default="main", show_default=True)
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default=None, help="Network parameters file (params.json).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the p2p host and blob server listen on.")
@click.option("--rpc-host", default="127.0.0.1", show_default=True,
              help="Address the JSON-RPC server listens on (it is for the operator: keep it on loopback unless behind a firewall).")
@click.option("--port", default=0, type=int, help="libp2p TCP port (0: any).")
@click.option("--rpc-port", default=8645, type=int, show_default=True, help="JSON-RPC port (0: any).")
@click.option("--blob-port", default=0, type=int, help="Blob HTTP port (0: any).")
@click.option("--bootstrap", multiple=True, help="Peer multiaddr to connect to (repeatable).")
@click.option("--assume-valid", "assume_valid", default=None, metavar="HASH",
              help="A block known good: its ancestors buried deeper than the finality window skip the Dice recomputation "
                   "during sync (every other block is fully verified).")
@click.option("--claim-wait", type=float, default=None, help="Seconds into Phase 2 before claims are verified.")
@click.option("--verify-workers", default="auto", show_default=True, metavar="N|auto",
              help="Worker processes that verify claims (auto: one per core but one, or one for a GPU; 0: in the node's thread).")
@click.option("--verify-device", default="cpu", show_default=True, metavar="cpu|cuda:N",
              help="Where claims are verified (a GPU: cuda:0).")
@click.option("--explorer-port", type=click.IntRange(0, 65535), default=None,
              help="Serve the read-only explorer web page on this port (0: any; default: no explorer).")
@click.option("--explorer-host", default="127.0.0.1", show_default=True, help="Address the explorer listens on.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics at /metrics on this port (0: any; default: none).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics endpoint listens on.")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line.")
@click.pass_context
def start(ctx: click.Context, **opts) -> None:
    """Start a full node and run it until Ctrl-C or SIGTERM.

    Options not given here are read from DATADIR/pouw.conf when it exists
    (docs/operator.md); a flag on the command line wins over the file.
    """
    from fullnode.config import CONF_NAME, ConfigError, NodeConfig, read_conf_file
    from fullnode.node import FullNode
    from pouw.chaindb import StoreError

    datadir = opts["datadir"] or DEFAULT_DATADIR / opts["network"]
    try:
        conf_path = opts["conf_file"] or datadir / CONF_NAME
        opts = apply_conf(ctx, opts, read_conf_file(conf_path, required=opts["conf_file"] is not None))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    datadir.mkdir(parents=True, exist_ok=True)
    out_lock = threading.Lock()
    as_json = opts["as_json"]

    def emit(message: str) -> None:
        with out_lock:
            if as_json:
                print(json.dumps({"time": round(time.time(), 3), "event": message}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    logging.basicConfig(level=os.environ.get("POUW_LOG", "WARNING"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = _load_params(opts["network"], opts["params_file"], datadir)
        device, workers = _parse_verify_options(opts["verify_device"], opts["verify_workers"])
        config = NodeConfig(
            datadir=datadir,
            params=params,
            host=opts["host"],
            rpc_host=opts["rpc_host"],
            p2p_port=opts["port"],
            rpc_port=opts["rpc_port"],
            blob_port=opts["blob_port"],
            bootstrap=list(opts["bootstrap"]),
            assume_valid=_parse_block_hash(opts["assume_valid"]),
            claim_wait_seconds=opts["claim_wait"],
            explorer_port=opts["explorer_port"],
            explorer_host=opts["explorer_host"],
            metrics_port=opts["metrics_port"],
            metrics_host=opts["metrics_host"],
            verify_workers=workers,
            verify_device=device,
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
