"""`pouw task ...`: publishing segmentation tasks."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def task() -> None:
    """Segmentation tasks: pack datasets, submit and follow tasks."""


@task.command("pack")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Publisher key store folder (default $POUW_KEYSTORE or ~/.pouw/keys).")
@click.option("--chunk-size", type=click.IntRange(1024, 64 << 20), default=None,
              help="Plaintext bytes per encrypted chunk (default 1 MiB).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pack(dataset_dir: Path, out_dir: Path, keystore: Path | None, chunk_size: int | None, as_json: bool) -> None:
    """Encrypt DATASET_DIR's training and test splits into two blobs in OUT_DIR."""
    from pouw.blobcrypt import DEFAULT_CHUNK_SIZE
    from pouw.seg.data import DataError
    from pouw.taskpack import PackError, pack_dataset

    try:
        result = pack_dataset(dataset_dir, out_dir, keystore, chunk_size or DEFAULT_CHUNK_SIZE)
    except (DataError, PackError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for b in (result.train, result.test):
        click.echo(f"{b.split:5} {b.cases:4d} cases  {b.size:>12,d} bytes  {b.digest.hex()}  {b.path}")
    click.echo(f"manifest: {result.manifest_path}")
    click.echo(f"keys:     {result.keystore_path} (keep private; reveal at the task's phases)")


def _register_publisher_commands() -> None:
    # submit/list/status/results talk to a node; they live beside pack in pouw.cli.publish.
    from pouw.cli.publish import COMMANDS

    for command in COMMANDS:
        task.add_command(command)


_register_publisher_commands()
