"""`pouw devnet up`: a whole network on loopback in one command."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import click


@click.group()
def devnet() -> None:
    """Run a local development network."""


def _interrupt(signum, _frame) -> None:
    # SIGTERM (systemd, CI, kill) and SIGHUP (a closed terminal) take Ctrl-C's road, so every process is stopped.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _print_user_guide(net, funds: int) -> None:
    key_file, pass_file = net.write_user_wallet()
    cmds = net.user_commands(key_file, pass_file)
    lines = [
        f"your wallet: {key_file} (passphrase in {pass_file}), address {net.user_key.address}, "
        f"{funds // 100_000_000:,} coins at genesis",
        "",
        "Try it with your own dataset (MSD / nnU-Net layout). Check the balance:",
        f"  {cmds['balance']}",
        "Make the real 2D example (nuclei tiles, needs `pip install --no-deps stardist==0.9.2`), or use your own folder:",
        f"  {cmds['dataset']}",
        "Submit it as a task (the reward is escrowed; miners train on it two blocks after it is included):",
        f"  {cmds['submit']}",
        "Follow it (put the task id the submit printed in place of TASK_ID):",
        f"  {cmds['status']}",
        "Fetch the winning model, its Dice and the figures once its status is mined:",
        f"  {cmds['results']}",
        "",
        "The devnet runs until Ctrl-C (or SIGTERM/SIGHUP); then every node and miner stops.",
    ]
    for line in lines:  # no time stamps: these lines are for copying
        click.echo(line)


@devnet.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 16), help="Full nodes to start.")
@click.option("--miners", default=2, show_default=True, type=click.IntRange(1, 16), help="Miners to start.")
@click.option("--blocks", default=6, show_default=True, type=click.IntRange(1, 10_000), help="Stop after this many blocks (not with --keep).")
@click.option("--keep", is_flag=True,
              help="Run until Ctrl-C: fund a wallet for you and print the commands to submit your own dataset.")
@click.option("--phase1", default=20, show_default=True, type=click.IntRange(5, 86_400), help="Phase 1 seconds.")
@click.option("--phase2", default=10, show_default=True, type=click.IntRange(4, 86_400), help="Phase 2 seconds.")
@click.option("--rewards", default=None,
              help="Comma-separated rewards (coins) of the tasks the devnet submits itself [default: 60,90; none with --keep].")
@click.option("--explorer-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Node 0 serves the explorer page on this port (0: any free port).")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=None, help="Keep the devnet here (default: a temporary folder, removed at the end).")
@click.option("--timeout", default=900.0, show_default=True, help="Give up after this many seconds (not with --keep).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of live lines.")
def up(nodes, miners, blocks, keep, phase1, phase2, rewards, explorer_port, root, timeout, as_json) -> None:
    """Start NODES nodes and MINERS miners on loopback, submit tasks, mine BLOCKS blocks, stop.

    With --keep the devnet runs until Ctrl-C, SIGTERM or SIGHUP instead, and
    funds a wallet for you (see the README's walkthrough).
    """
    from pouw.devnet import USER_FUNDS, Devnet, DevnetError, DevnetOptions

    if rewards is None:
        rewards = "" if keep else "60,90"
    try:
        task_rewards = tuple(int(r) for r in rewards.split(",") if r.strip())
    except ValueError:
        raise click.BadParameter("rewards must be integers separated by commas", param_hint="--rewards") from None
    if keep and as_json:
        raise click.UsageError("--json prints a summary at the end; a devnet with --keep has no end")
    temporary = root is None
    root = Path(tempfile.mkdtemp(prefix="pouw-devnet-")) if temporary else root
    started = time.time()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    def emit(line: str) -> None:
        if not as_json:
            click.echo(f"{time.strftime('%H:%M:%S')} {line}")

    def on_block(b: dict) -> None:
        task = "standing task" if b["task"] == "standing" else f"task {b['task'][:12]}"
        emit(
            f"block {b['height']:>3}  {b['hash'][:12]}  {task:<20} reward {b['reward'] / 1e8:>6.2f}  "
            f"winner {b['winner'][:12]}  dice {b['dice']:.4f}  (+{time.time() - started:.0f}s)"
        )

    options = DevnetOptions(root=root, nodes=nodes, miners=miners, blocks=blocks, phase1=phase1, phase2=phase2,
                            tasks=task_rewards, timeout=timeout, explorer_port=explorer_port, user_wallet=keep)
    result = None
    try:
        with Devnet(options, emit=emit) as net:
            net.start()
            if keep:
                _print_user_guide(net, USER_FUNDS)
            net.submit_tasks()
            if keep:
                net.watch(on_block, forever=True)
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
    except KeyboardInterrupt as exc:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # everything is stopped: a late second signal must not cut the exit short
        why = f" ({exc.args[0]})" if exc.args else ""
        click.echo(f"interrupted{why}; every node and miner stopped", err=True)
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
