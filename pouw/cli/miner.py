"""`pouw miner start`: train models for blocks against a running node."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pouw.cli.common import (
    DEFAULT_NODE_URL,
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
@click.option("--device", default="cpu", show_default=True, help="Where to train: cpu or cuda:N.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for training (default: all cores).")
@click.option("--margin", type=click.FloatRange(0.0, 600.0), default=None,
              help="Seconds to stop training before Phase 2 (default: 2 s + round trip + 2% of Phase 1).")
@click.option("--blob-host", default="127.0.0.1", show_default=True, help="Address of the miner's blob server.")
@click.option("--blob-port", type=click.IntRange(0, 65535), default=0, help="Port of the blob server (default: any).")
@click.option("--public-url", default=None, help="Base URL other nodes fetch this miner's models from.")
@click.option("--once", is_flag=True, help="Exit after the first claim (once its height is decided).")
@click.option("--no-progress", is_flag=True, help="Hide the training progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
def start(node_url: str, datadir: Path, workdir: Path | None, key_file: Path, passphrase_file: Path | None,
          key_seed: str | None, device: str, threads: int | None, margin: float | None, blob_host: str,
          blob_port: int, public_url: str | None, once: bool, no_progress: bool, as_json: bool) -> None:
    """Follow the node's phases: train in Phase 1, commit, evaluate and claim in Phase 2."""
    if not (device == "cpu" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise click.BadParameter("must be cpu or cuda:N", param_hint="--device")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available() or int(device[5:]) >= torch.cuda.device_count():
            raise click.ClickException(f"device {device} is not available on this machine")
    keypair = load_keypair(key_file, passphrase_file, key_seed)

    from miner.events import Reporter
    from miner.loop import Miner, MinerConfig
    from miner.node import NodeLink

    config = MinerConfig(
        keypair=keypair, workdir=workdir or get_pouw_home() / "miner", device=device, threads=threads or os.cpu_count(),
        margin=margin, progress=not (no_progress or as_json), blob_host=blob_host, blob_port=blob_port,
        public_url=public_url,
    )
    reporter = Reporter(as_json=as_json)
    node = NodeLink(make_client(node_url, datadir, timeout=30.0), reporter)
    try:
        Miner(node, config, reporter).run(once=once)
    except KeyboardInterrupt:
        reporter.emit("stop", "stopped")
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
