"""`pouw devnet up`: a whole network on loopback in one command."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click


@click.group()
def devnet() -> None:
    """Run a local development network."""


@devnet.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 16), help="Full nodes to start.")
@click.option("--miners", default=2, show_default=True, type=click.IntRange(1, 16), help="Miners to start.")
@click.option("--blocks", default=6, show_default=True, type=click.IntRange(1, 10_000), help="Stop after this many blocks.")
@click.option("--phase1", default=20, show_default=True, type=click.IntRange(5, 86_400), help="Phase 1 seconds.")
@click.option("--phase2", default=10, show_default=True, type=click.IntRange(4, 86_400), help="Phase 2 seconds.")
@click.option("--rewards", default="60,90", show_default=True, help="Comma-separated rewards (coins) of the tasks to submit.")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=None, help="Keep the devnet here (default: a temporary folder, removed at the end).")
@click.option("--timeout", default=900.0, show_default=True, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of live lines.")
def up(nodes, miners, blocks, phase1, phase2, rewards, root, timeout, as_json) -> None:
    """Start NODES nodes and MINERS miners on loopback, submit tasks, mine BLOCKS blocks, stop."""
    from pouw.devnet import Devnet, DevnetError, DevnetOptions

    try:
        task_rewards = tuple(int(r) for r in rewards.split(",") if r.strip())
    except ValueError:
        raise click.BadParameter("rewards must be integers separated by commas", param_hint="--rewards") from None
    temporary = root is None
    root = Path(tempfile.mkdtemp(prefix="pouw-devnet-")) if temporary else root
    started = time.time()

    def emit(line: str) -> None:
        if not as_json:
            click.echo(f"{time.strftime('%H:%M:%S')} {line}")

    def on_block(b: dict) -> None:
        task = "standing task" if b["task"] == "standing" else f"task {b['task'][:12]}"
        emit(
            f"block {b['height']:>3}  {b['hash'][:12]}  {task:<20} reward {b['reward'] / 1e8:>6.2f}  "
            f"winner {b['winner'][:12]}  dice {b['dice']:.4f}  (+{time.time() - started:.0f}s)"
        )

    options = DevnetOptions(root=root, nodes=nodes, miners=miners, blocks=blocks, phase1=phase1, phase2=phase2, tasks=task_rewards, timeout=timeout)
    result = None
    try:
        with Devnet(options, emit=emit) as net:
            net.start()
            net.submit_tasks()
            found = net.watch(on_block)
            net.stop_miners()
            tips = net.tips(settle_seconds=phase2 + 5)
            agreed = len(set(tips)) == 1
            # A better claim may have replaced a block while the tips settled: report the final chain.
            found = [net.describe_height(0, b["height"]) for b in found]
            result = {
                "blocks": [{k: b[k] for k in ("height", "hash", "task", "reward", "winner", "dice")} for b in found],
                "tips": tips,
                "agreed": agreed,
                "seconds": round(time.time() - started, 1),
            }
            emit(f"{'all nodes agree on' if agreed else 'nodes DISAGREE; tips:'} {tips[0][:12] if agreed else tips} after {result['seconds']} s; stopping")
    except DevnetError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; everything stopped", err=True)
        sys.exit(130)
    finally:
        if temporary and result is not None:
            shutil.rmtree(root, ignore_errors=True)
        elif result is None:
            click.echo(f"devnet files (logs) kept in {root}", err=True)
    if as_json:
        click.echo(json.dumps(result))
    if not result["agreed"]:
        sys.exit(1)
