"""`pouw task submit | list | status | results`: publishing a task and getting its model back.

The commands are registered under the `pouw task` group (pouw/cli/task.py)
from COMMANDS. A submitted task's keys are handed to the node
(`addtaskkeys`), which reveals each one at its moment, so the publisher
need not stay online (docs/miner.md).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from pouw.cli.common import (
    DEFAULT_FEE,
    call,
    format_coins,
    json_option,
    key_options,
    load_keypair,
    make_client,
    node_options,
    output,
    parse_coins,
    seed_option,
    short,
)
from pouw.encoding import decode, encode
from pouw.types import BlobRef, TaskSubmission

MODE_NAMES = {0: "normal", 1: "no training key (refunded)", 2: "no test key (scored on training set)"}


def parse_patch(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").replace("×", ",").split(",")
    try:
        patch = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise click.BadParameter("must look like 64,64 or 64x64x32", param_hint="--patch-size") from None
    if len(patch) not in (2, 3):
        raise click.BadParameter("must have 2 or 3 sides", param_hint="--patch-size")
    return patch


@click.command("submit")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reward", required=True, help="Reward in coins, escrowed now and paid to the best verified model.")
@click.option("--model", "architecture", type=click.Choice(["unet2d", "unet3d", "fcn"]), required=True)
@click.option("--base-filters", type=click.IntRange(1, 512), default=16, show_default=True)
@click.option("--patch-size", default=None, help="Input size, e.g. 64,64 or 64,64,32 (default 64,64; 64,64,32 for unet3d).")
@click.option("--preprocess", type=click.Choice(["resize", "crop", "patch"]), default="resize", show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Most epochs; miners stop earlier when Phase 1 ends.")
@click.option("--loss", type=click.Choice(["dice", "dicece"]), default="dice", show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--fee", default=DEFAULT_FEE, show_default=True, help="Transaction fee in coins.")
@click.option("--title", default=None, help="Short description (default: the dataset's name).")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset keys are kept (default $POUW_KEYSTORE or ~/.pouw/keys).")
@click.option("--out-dir", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the encrypted blobs here (default: a temporary folder, removed once the node holds them).")
@node_options
@key_options
@seed_option
@json_option
def submit(dataset_dir: Path, reward: str, architecture: str, base_filters: int, patch_size: str | None,
           preprocess: str, lr: float, batch_size: int, epochs: int, loss: str, optimizer: str, fee: str,
           title: str | None, keystore: Path | None, out_dir: Path | None, node_url: str, datadir: Path,
           key_file: Path, passphrase_file: Path | None, key_seed: str | None, as_json: bool) -> None:
    """Encrypt DATASET_DIR, give its blobs to the node, and publish it as a task with a reward."""
    from pouw.seg.data import DataError, read_dataset_info
    from pouw.seg.spec import ModelSpec, SpecError, TrainSpec
    from pouw.taskpack import PackError, pack_dataset

    reward_units = parse_coins(reward, "reward")
    fee_units = parse_coins(fee, "fee")
    patch = parse_patch(patch_size or ("64,64,32" if architecture == "unet3d" else "64,64"))
    try:
        info = read_dataset_info(dataset_dir)
        model = ModelSpec(architecture, len(info.channel_names), len(info.class_names), base_filters, patch, preprocess)
        train = TrainSpec(learning_rate=lr, batch_size=batch_size, loss=loss, optimizer=optimizer, max_epochs=epochs)
    except (DataError, SpecError) as exc:
        raise click.ClickException(str(exc)) from None
    client = make_client(node_url, datadir)
    keypair = load_keypair(key_file, passphrase_file, key_seed)
    node = call(client, "getinfo")
    blob_url = str(node.get("blob_url") or "").rstrip("/")

    work = out_dir or Path(tempfile.mkdtemp(prefix="pouw-task-"))
    try:
        try:
            packed = pack_dataset(dataset_dir, work, keystore)
        except (DataError, PackError, OSError) as exc:
            raise click.ClickException(f"cannot pack {dataset_dir}: {exc}") from None
        refs = []
        for blob in (packed.train, packed.test):
            got = call(client, "importblob", path=str(blob.path.resolve()))
            if got["digest"] != blob.digest.hex():
                raise click.ClickException(f"the node stored {blob.split} blob as {got['digest']}, not {blob.digest.hex()}")
            links = (f"{blob_url}/blob/{blob.digest.hex()}",) if blob_url else ()
            refs.append(BlobRef(blob.digest, blob.size, blob.key_commitment, links))
    finally:
        if out_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    acct = call(client, "getbalance", address=keypair.address)
    submission = TaskSubmission(
        publisher=keypair.public_key, reward=reward_units, fee=fee_units, nonce=int(acct["pending_nonce"]),
        model=model, train=train, train_blob=refs[0], test_blob=refs[1],
        title=(title or str(info.raw.get("name") or dataset_dir.name))[:200],
    ).signed_by(keypair)
    res = call(client, "sendtx", hex=encode(submission).hex())
    task_id = submission.task_id.hex()
    # The node reveals each key at its moment (training key at t(s,a), test key at t(s,b)).
    call(client, "addtaskkeys", task_id=task_id, train_key=packed.train.key.hex(), test_key=packed.test.key.hex())
    output(as_json, {
        "task_id": task_id, "txid": res["txid"], "reward": reward_units, "fee": fee_units,
        "train": {"digest": packed.train.digest.hex(), "size": packed.train.size, "cases": packed.train.cases},
        "test": {"digest": packed.test.digest.hex(), "size": packed.test.size, "cases": packed.test.cases},
        "keystore": str(packed.keystore_path),
    }, lambda: [
        f"task {task_id}",
        f"reward {format_coins(reward_units)} coins escrowed; {packed.train.cases} training / "
        f"{packed.test.cases} test cases",
        f"keys kept in {packed.keystore_path}; the node reveals them at the task's phases",
    ])


@click.command("list")
@node_options
@json_option
def list_(node_url: str, datadir: Path, as_json: bool) -> None:
    """Tasks the node knows: pending, waiting, scheduled, mined."""
    res = call(make_client(node_url, datadir), "listtasks")
    tasks = res.get("tasks", [])

    def lines() -> list[str]:
        if not tasks:
            return ["no tasks"]
        out = [f"{'task':18} {'status':10} {'height':>6} {'reward':>12}  title"]
        for t in tasks:
            height = t.get("height") or ""
            out.append(f"{short(t['task_id']):18} {t.get('status', ''):10} {height!s:>6} "
                       f"{format_coins(int(t.get('reward', 0))):>12}  {t.get('title', '')}")
        return out

    output(as_json, res, lines)


@click.command("status")
@click.argument("task_id")
@node_options
@json_option
def status(task_id: str, node_url: str, datadir: Path, as_json: bool) -> None:
    """Where TASK_ID stands, and its result once mined."""
    res = call(make_client(node_url, datadir), "gettask", task_id=task_id.lower())

    def lines() -> list[str]:
        out = [f"task   {res['task_id']}", f"title  {res.get('title', '')}",
               f"status {res.get('status')}" + (f" (height {res['height']})" if res.get("height") else ""),
               f"reward {format_coins(int(res.get('reward', 0)))} coins"]
        r = res.get("result")
        if r:
            out += [f"block  {r['block_hash']} at height {r['height']}",
                    f"winner {r['winner']}", f"Dice   {int(r['dice_ppm']) / 1e6:.4f} ({MODE_NAMES.get(r.get('mode'), r.get('mode'))})",
                    f"model  {r['model_digest']}"]
        return out

    output(as_json, res, lines)


@click.command("results")
@click.argument("task_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the model, its Dice and the figures.")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The publisher's key store (default $POUW_KEYSTORE or ~/.pouw/keys).")
@click.option("--overlays", type=click.IntRange(0, 1000), default=8, show_default=True,
              help="How many test images to draw prediction overlays for.")
@click.option("--no-plot", is_flag=True, help="Skip the Dice-per-epoch plot (it fetches every checkpoint).")
@node_options
@json_option
def results(task_id: str, out_dir: Path, keystore: Path | None, overlays: int, no_plot: bool, node_url: str,
            datadir: Path, as_json: bool) -> None:
    """Fetch TASK_ID's winning model and score it on the task's own test split."""
    from pouw.blobstore import BlobError, BlobStore
    from pouw.seg.dice import evaluate
    from pouw.seg.report import compute_dice_per_checkpoint, write_dice_plot_png, write_prediction_overlays
    from pouw.seg.checkpoints import read_checkpoint_header
    from pouw.seg.weights import WeightsError
    from pouw.types import MAX_CHECKPOINT_HEADER_BYTES
    from pouw.taskpack import get_default_keystore, read_keystore_entry
    from consensus.transition import InvalidBlock
    from consensus.work import load_task_split
    from pouw.types import KEY_TEST

    from miner.prefetch import fetch_blob

    client = make_client(node_url, datadir)
    res = call(client, "gettask", task_id=task_id.lower())
    result = res.get("result")
    if not result:
        raise click.ClickException(f"task {short(task_id)} has no result yet (status {res.get('status')})")
    if result.get("mode") == 1:
        raise click.ClickException("the task's training key was not revealed in time: it was refunded, no model trained on it")
    task = decode(TaskSubmission, bytes.fromhex(res["submission_hex"]))
    ks_file = Path(keystore or get_default_keystore()) / f"{task.train_blob.digest.hex()}.json"
    try:
        test_key = read_keystore_entry(ks_file)["test"][1]
    except (OSError, KeyError, ValueError) as exc:
        raise click.ClickException(f"no test key for this task in {ks_file} ({exc}); are you its publisher?") from None
    blob_url = call(client, "getinfo").get("blob_url")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = BlobStore(out_dir / ".blobs")
    links = tuple(result.get("links", ()))

    def get(digest_hex: str, size: int) -> bytes:
        digest = bytes.fromhex(digest_hex)
        ref = BlobRef(digest, size, bytes(32), tuple(f"{link.rstrip('/')}/blob/{digest_hex}" for link in links))
        fetch_blob(store, ref, blob_url, exact_size=False)  # `size` is only a bound here
        return store.get_bytes(digest)

    try:
        model_file = get(result["model_digest"], 1 << 40)
        fetch_blob(store, task.test_blob, blob_url)
        test_set = load_task_split(task, KEY_TEST, test_key, store, out_dir / ".data")
    except (BlobError, InvalidBlock) as exc:
        raise click.ClickException(str(exc)) from None
    model_path = out_dir / "model.pouw"
    model_path.write_bytes(model_file)
    dice = evaluate(model_file, task.model, test_set)
    figures = [str(p) for p in write_prediction_overlays(out_dir / "overlays", model_file, task.model, test_set, overlays)] if overlays else []
    if not no_plot:
        try:
            for d in result.get("checkpoint_digests", []):  # each header, then the weights it names (no optimizer state)
                get(d, MAX_CHECKPOINT_HEADER_BYTES)
                weights = read_checkpoint_header(store, bytes.fromhex(d)).weights
                get(weights.digest.hex(), weights.size)
            curve = compute_dice_per_checkpoint(store, [bytes.fromhex(d) for d in result["checkpoint_digests"]],
                                                task.model, test_set)
            figures.append(str(write_dice_plot_png(out_dir / "dice.png", {"test Dice": list(enumerate(curve))},
                                                   title=f"task {task_id[:12]}: Dice per epoch")))
        except (BlobError, WeightsError) as exc:
            click.echo(f"no Dice plot: {exc}", err=True)
    summary = {
        "task_id": res["task_id"], "height": result["height"], "block_hash": result["block_hash"],
        "winner": result["winner"], "mode": result.get("mode"), "claimed_dice_ppm": result["dice_ppm"],
        "test_dice_ppm": dice.dice_ppm, "per_class_ppm": list(dice.per_class), "model": str(model_path),
        "model_digest": result["model_digest"], "figures": figures,
    }
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out_dir / ".data", ignore_errors=True)
    output(as_json, summary, lambda: [
        f"model  {model_path}",
        f"Dice   {dice.dice_ppm / 1e6:.4f} on {len(test_set)} test images (block claimed {int(result['dice_ppm']) / 1e6:.4f})",
        f"figures in {out_dir} ({len(figures)} files)",
    ])


COMMANDS = [submit, list_, status, results]
