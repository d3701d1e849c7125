"""`pouw devnet up` as a user runs it: stop signals, the user's wallet, and the miner's first slot.

The signal tests start the real command as a process tree (nodes and miners
in their own sessions, as the devnet starts them), send it SIGTERM or SIGHUP
as systemd, CI or a closed terminal would, and check that no process it
started survives.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from consensus.genesis import COIN, make_devnet_params
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from miner.events import Reporter
from miner.loop import Miner, MinerConfig
from miner.node import NodeLink
from pouw.devnet import USER_FUNDS
from pouw.keys import KeyPair
from pouw.rpc import RpcClient
from pouw.types import Allocation

pytestmark = pytest.mark.slow

GUIDE_END = "The devnet runs until Ctrl-C"


def read_proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def get_descendants(root: int) -> dict[int, int]:
    """Every process below `root`: pid -> start time (so a reused pid is not mistaken for a survivor)."""
    table = read_proc_table()
    out, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in table.items():
            if ppid == parent and pid not in out:
                out[pid] = started
                frontier.append(pid)
    return out


def is_alive(pid: int, started: int) -> bool:
    """True while the process `pid` started at `started` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) == started and fields[0] != "Z"


def wait_for_line(proc: subprocess.Popen, lines: list[str], text: str, timeout: float) -> None:
    """Read the process's output into `lines` until a line contains `text`."""
    found = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if text in line:
                found.set()

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(timeout):
        raise AssertionError(f"`{text}` not printed within {timeout:.0f} s; output:\n" + "\n".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_stop_signal_stops_every_process_the_devnet_started(tmp_path, signum):
    root = tmp_path / "net"
    cmd = [sys.executable, "-m", "pouw.cli", "devnet", "up", "--keep", "--nodes", "2", "--miners", "1", "--dir", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    children: dict[int, int] = {}
    lines: list[str] = []
    try:
        wait_for_line(proc, lines, GUIDE_END, 180)
        children = get_descendants(proc.pid)
        names = [" ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0")) for pid in children]
        assert sum(" node start " in n for n in names) == 2 and sum(" miner start " in n for n in names) == 1, names

        if signum == signal.SIGTERM:
            # The guide's wallet is funded in genesis and its printed balance command works as printed.
            balance_cmd = next(line.strip() for line in lines if line.strip().startswith("pouw wallet balance"))
            args = shlex.split(balance_cmd)
            out = subprocess.run([sys.executable, "-m", "pouw.cli", *args[1:], "--json"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout.strip().splitlines()[-1])["balance"] == USER_FUNDS
            assert oct((root / "wallet.key").stat().st_mode & 0o777) == "0o600"
            assert oct((root / "wallet.pass").stat().st_mode & 0o777) == "0o600"

        proc.send_signal(signum)
        code = proc.wait(90)
        deadline = time.time() + 10
        while any(is_alive(pid, started) for pid, started in children.items()) and time.time() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid, started in children.items() if is_alive(pid, started)]
        assert not survivors, f"still running after {signal.Signals(signum).name}: {survivors}"
        if signum == signal.SIGKILL:  # no handler runs: the nodes and miners end by themselves (README, "devnet")
            assert code == -signal.SIGKILL
        else:
            assert code == 130, "\n".join(lines)  # as after Ctrl-C
            assert any(signal.Signals(signum).name in line for line in lines)
    finally:
        for pid, started in children.items():
            if is_alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_miner_waits_for_the_first_slot_instead_of_committing_before_genesis(tmp_path):
    miner_key = KeyPair.from_seed(bytes(31) + b"\x07")
    # Phases long enough for a loaded machine; the old miner trained the standing task (~3 s) before genesis.
    params = make_devnet_params(int(time.time()) + 14, (Allocation(miner_key.public_key, 10 * COIN),),
                                phase1_seconds=20, phase2_seconds=10)
    node = FullNode(NodeConfig(datadir=tmp_path / "node", params=params), log_fn=lambda msg: None).start()
    reporter = Reporter(as_json=True, stream=io.StringIO())
    stop = threading.Event()
    thread = None
    try:
        link = NodeLink(RpcClient(node.rpc.url, datadir=node.datadir, timeout=30), reporter)
        miner = Miner(link, MinerConfig(keypair=miner_key, workdir=tmp_path / "miner", threads=1, progress=False), reporter)
        thread = threading.Thread(target=miner.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        deadline = params.genesis_time + params.slot_seconds + 20
        while node.chain.tip_height < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert node.chain.tip_height >= 1, f"no block in the first slot: {reporter.history}"
        block = node.chain.get_block_at(1)
        assert block.header.slot == 0 and block.header.miner == miner_key.public_key, reporter.history
    finally:
        stop.set()
        if thread is not None:
            thread.join(60)
        node.stop()
    # The miner may train before genesis (the seed is known: it builds on genesis), but commits only once slot 0
    # has begun, so its commit is not refused as "not in Phase 1 of slot 0" and slot 0 yields a block.
    rounds, commits = reporter.events("round"), reporter.events("commit")
    assert rounds and rounds[0]["slot"] == 0, reporter.history
    assert commits and commits[0]["slot"] == 0 and commits[0]["time"] >= params.genesis_time, reporter.history
    assert not reporter.events("abandon"), reporter.history
