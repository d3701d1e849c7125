"""`pouw miner start`: train models for blocks against a running node."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pouw.cli.common import (
    DEFAULT_NODE_URL,
    parse_coins,
    get_pouw_home,
    key_options,
    load_keypair,
    make_client,
    node_datadir_option,
    seed_option,
)


@click.group()
def miner() -> None:
    """Miner: train segmentation models for blocks."""


@miner.command("start")
@click.option("--node", "node_url", envvar="POUW_NODE", default=DEFAULT_NODE_URL, show_default=True,
              help="RPC address of the pouw node ($POUW_NODE).")
@node_datadir_option("--node-datadir")
@click.option("--datadir", "--workdir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The miner's own folder: its blob store (task data, models, checkpoints) and decrypted data "
                   "(default ~/.pouw/miner).")
@key_options
@seed_option
@click.option("--device", default=None, help="Where to train, one device: cpu or cuda:N (default cpu).")
@click.option("--devices", default=None,
              help="Train one model on several devices together (data parallel): cuda:0,cuda:1,... or all "
                   "(every GPU); cpu,cpu,... runs that many CPU processes.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for training (default: all cores).")
@click.option("--margin", type=click.FloatRange(0.0, 600.0), default=None,
              help="Seconds to stop training before Phase 2 (default: 2 s + round trip + 2% of Phase 1).")
@click.option("--blob-host", default="127.0.0.1", show_default=True, help="Address of the miner's blob server.")
@click.option("--blob-port", type=click.IntRange(0, 65535), default=0, help="Port of the blob server (default: any).")
@click.option("--public-url", default=None, help="Base URL other nodes fetch this miner's models from.")
@click.option("--bond", default="10", show_default=True,
              help="Coins kept locked as claim bond (bonded at start if missing; a false claim forfeits it; 0: none).")
@click.option("--once", is_flag=True, help="Exit after the first claim (once its height is decided).")
@click.option("--no-progress", is_flag=True, help="Hide the training progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def start(node_url: str, datadir: Path, workdir: Path | None, key_file: Path, passphrase_file: Path | None,
          key_seed: str | None, device: str | None, devices: str | None, threads: int | None, margin: float | None,
          blob_host: str, blob_port: int, public_url: str | None, bond: str, once: bool, no_progress: bool,
          as_json: bool) -> None:
    """Follow the node's phases: train in Phase 1, commit, evaluate and claim in Phase 2."""
    chosen = get_devices(device, devices)
    keypair = load_keypair(key_file, passphrase_file, key_seed)

    from miner.events import Reporter
    from miner.loop import Miner, MinerConfig
    from miner.node import NodeLink

    config = MinerConfig(
        keypair=keypair, workdir=workdir or get_pouw_home() / "miner", device=chosen[0], devices=chosen,
        threads=threads or os.cpu_count(),
        margin=margin, progress=not (no_progress or as_json), blob_host=blob_host, blob_port=blob_port,
        public_url=public_url, bond=parse_coins(bond, "bond"),
    )
    reporter = Reporter(as_json=as_json)
    node = NodeLink(make_client(node_url, datadir, timeout=30.0), reporter)
    try:
        Miner(node, config, reporter).run(once=once)
    except KeyboardInterrupt:
        reporter.emit("stop", "stopped")
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def get_devices(device: str | None, devices: str | None) -> tuple[str, ...]:
    """The devices of --device / --devices, checked against this machine (one of the two options at most)."""
    from pouw.seg.launch import parse_devices

    if device is not None and devices is not None:
        raise click.UsageError("give --device or --devices, not both")
    option, text = ("--devices", devices) if devices is not None else ("--device", device or "cpu")
    try:
        chosen = parse_devices(text)
    except ValueError as exc:
        if "not available" in str(exc) or "no CUDA" in str(exc):
            raise click.ClickException(str(exc)) from None
        raise click.BadParameter(str(exc), param_hint=option) from None
    if option == "--device" and len(chosen) != 1:
        raise click.BadParameter("one device (cpu or cuda:N); use --devices for several", param_hint=option)
    return chosen
