"""A whole network on loopback, as separate processes: nodes, miners, publishers.

`Devnet` writes the network parameters (genesis a few seconds ahead, short
phases, funded publisher and miner keys), starts the nodes (each later one
bootstrapping from the first), the miners (spread over the nodes), submits
tasks with different rewards from synthetic datasets, and watches the chain.
Every process it starts it stops, on success, error, Ctrl-C, SIGTERM or
SIGHUP (`pouw devnet up` turns the last two into Ctrl-C).

For a person trying the chain (`pouw devnet up --keep`) it also funds a
fresh wallet in genesis, writes its key file, and says the exact commands
that submit, follow and fetch their own task (`user_commands`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from consensus.genesis import COIN, make_devnet_params
from fullnode.config import ConfigError, read_node_file, save_params
from pouw.keys import KeyPair, write_key_file
from pouw.rpc import RpcClient, RpcError
from pouw.types import Allocation, ChainParams

START_MARGIN_SECONDS = 25
"""Genesis lies this far ahead, so every process is up before slot 0 starts."""
USER_FUNDS = 1_000 * COIN
"""What the user's devnet wallet holds at genesis."""
NUCLEI_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_nuclei_example.py"
"""Builds the real 2D example dataset (in a clone of the project)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals held back while the devnet stops its processes, so a second one cannot cut the clean-up short."""


def devnet_key(role: str, index: int) -> KeyPair:
    """The deterministic key of a devnet participant."""
    return KeyPair.from_seed(hashlib.sha256(f"pouw-devnet/{role}/{index}".encode()).digest())


@dataclass
class Proc:
    """A process the devnet started."""

    name: str
    popen: subprocess.Popen
    log_path: Path


@dataclass
class DevnetOptions:
    """What to start."""

    root: Path
    nodes: int = 3
    miners: int = 2
    blocks: int = 6
    phase1: int = 20
    phase2: int = 10
    tasks: tuple[int, ...] = (60, 90)
    """Rewards (coins) of the tasks the publishers submit, in submission order."""
    timeout: float = 900.0
    extra_node_args: dict[int, list[str]] = field(default_factory=dict)
    extra_miner_args: dict[int, list[str]] = field(default_factory=dict)
    explorer_port: int | None = None
    """Node 0 serves the explorer on this port (0: any free port; None: no explorer)."""
    user_wallet: bool = False
    """Fund a fresh key for the user and write its key file (`wallet.key`, passphrase in `wallet.pass`)."""


class DevnetError(Exception):
    """The devnet could not be started or did not reach its goal."""


def end_with_parent() -> None:
    """Runs in each forked child before exec: on Linux, ask for SIGTERM when the devnet process dies (even killed)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Devnet:
    """Start, watch and stop a devnet; use as a context manager so it always stops."""

    def __init__(self, options: DevnetOptions, *, emit: Callable[[str], None] = print):
        self.opt = options
        self.root = Path(options.root)
        self.emit = emit
        self.procs: list[Proc] = []
        self.node_dirs: list[Path] = []
        self.node_info: list[dict] = []
        self.params: ChainParams | None = None
        self.task_rewards: dict[str, int] = {}
        self.user_key: KeyPair | None = KeyPair.generate() if options.user_wallet else None

    # --- set-up -------------------------------------------------------------
    def make_params(self) -> ChainParams:
        publishers = [devnet_key("publisher", i) for i in range(max(1, len(self.opt.tasks)))]
        miners = [devnet_key("miner", i) for i in range(self.opt.miners)]
        allocations = tuple(Allocation(k.public_key, 1_000 * COIN) for k in publishers + miners)
        if self.user_key is not None:
            allocations += (Allocation(self.user_key.public_key, USER_FUNDS),)
        return make_devnet_params(
            int(time.time()) + START_MARGIN_SECONDS,
            allocations,
            phase1_seconds=self.opt.phase1,
            phase2_seconds=self.opt.phase2,
        )

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        fh = open(log_path, "ab")
        popen = subprocess.Popen([sys.executable, "-m", "pouw.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True, preexec_fn=end_with_parent)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def _wait_node_file(self, datadir: Path, proc: Proc, timeout: float = 60.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.popen.poll() is not None:
                raise DevnetError(f"{proc.name} exited at start; see {proc.log_path}:\n{_tail(proc.log_path)}")
            try:
                info = read_node_file(datadir)
                if info.get("rpc_url") and info.get("p2p_addrs"):
                    return info
            except ConfigError:
                pass
            time.sleep(0.2)
        raise DevnetError(f"{proc.name} did not start within {timeout:.0f} s; see {proc.log_path}")

    def start(self) -> None:
        """Write parameters and start nodes and miners."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.params = self.make_params()
        params_file = save_params(self.root, self.params)
        self.emit(f"devnet in {self.root}: {self.opt.nodes} nodes, {self.opt.miners} miners, phases {self.opt.phase1}s/{self.opt.phase2}s")
        for i in range(self.opt.nodes):
            datadir = self.root / f"node{i}"
            self.node_dirs.append(datadir)
            args = ["node", "start", "--datadir", str(datadir), "--params", str(params_file), "--rpc-port", "0", "--port", "0"]
            if i == 0 and self.opt.explorer_port is not None:
                args += ["--explorer-port", str(self.opt.explorer_port)]
            if i > 0:
                args += ["--bootstrap", self.node_info[0]["p2p_addrs"][0]]
            args += self.opt.extra_node_args.get(i, [])
            proc = self._spawn(f"node{i}", args)
            self.node_info.append(self._wait_node_file(datadir, proc))
        for j in range(self.opt.miners):
            node_index = j % self.opt.nodes
            key = devnet_key("miner", j)
            args = [
                "miner", "start",
                "--node", self.node_info[node_index]["rpc_url"],
                "--node-datadir", str(self.node_dirs[node_index]),
                "--datadir", str(self.root / f"miner{j}"),
                "--key-seed", key.seed.hex(),
                "--threads", "1",
                "--json",
            ]
            args += self.opt.extra_miner_args.get(j, [])
            self._spawn(f"miner{j}", args)
        self.emit(f"genesis at {time.strftime('%H:%M:%S', time.localtime(self.params.genesis_time))}; nodes {', '.join(i['rpc_url'] for i in self.node_info)}")
        if self.explorer_url:
            self.emit(f"explorer: {self.explorer_url}")

    @property
    def explorer_url(self) -> str | None:
        """Node 0's explorer page, if it serves one."""
        return self.node_info[0].get("explorer_url") if self.node_info else None

    # --- the user's wallet ---------------------------------------------------------
    def write_user_wallet(self) -> tuple[Path, Path]:
        """Write the user's funded key (fast KDF: a devnet key) and its passphrase file, both mode 0600."""
        key_file, pass_file = self.root / "wallet.key", self.root / "wallet.pass"
        passphrase = secrets.token_urlsafe(18)
        fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passphrase + "\n")
        write_key_file(key_file, self.user_key, passphrase, fast=True)
        return key_file, pass_file

    def user_commands(self, key_file: Path, pass_file: Path) -> dict[str, str]:
        """The exact commands a user runs against node 0: submit a dataset, follow it, fetch its result."""
        # Absolute paths: the user runs these from another terminal, maybe another folder.
        node = ["--node", self.node_info[0]["rpc_url"], "--datadir", str(self.node_dirs[0].resolve())]
        keys = ["--key-file", str(key_file.resolve()), "--passphrase-file", str(pass_file.resolve())]
        keystore = ["--keystore", str((self.root / "user-task-keys").resolve())]
        pouw = ["pouw"]

        def join(*parts: list[str]) -> str:
            return shlex.join([p for part in parts for p in part])

        return {
            "balance": join(pouw, ["wallet", "balance"], node, ["--key-file", str(key_file.resolve())]),
            "dataset": shlex.join(["python", str(NUCLEI_SCRIPT) if NUCLEI_SCRIPT.exists() else "scripts/make_nuclei_example.py", "nuclei"]),
            "submit": join(pouw, ["task", "submit", "nuclei", "--reward", "60", "--model", "unet2d",
                                  "--patch-size", "64,64", "--base-filters", "8", "--epochs", "40"], node, keys, keystore),
            "status": join(pouw, ["task", "status", "TASK_ID"], node),
            "results": join(pouw, ["task", "results", "TASK_ID", "--out", "nuclei-results"], node, keystore),
        }

    def client(self, index: int) -> RpcClient:
        """An RPC client of node `index`."""
        return RpcClient(self.node_info[index]["rpc_url"], datadir=self.node_dirs[index], timeout=30)

    def submit_tasks(self) -> list[str]:
        """Publish one synthetic task per configured reward through node 0; returns the task ids."""
        from pouw.seg.data import write_synthetic_dataset_dir
        from pouw.seg.spec import ModelSpec

        spec = ModelSpec(architecture="unet2d", in_channels=1, num_classes=2, base_filters=8, patch_size=(32, 32))
        ids = []
        for i, reward in enumerate(self.opt.tasks):
            dataset = self.root / "datasets" / f"task{i}"
            if not (dataset / "dataset.json").exists():
                write_synthetic_dataset_dir(dataset, hashlib.sha256(f"devnet-task-{i}".encode()).digest(), 32, 16, spec)
            key = devnet_key("publisher", i)
            args = [
                sys.executable, "-m", "pouw.cli", "task", "submit", str(dataset),
                "--reward", str(reward), "--model", "unet2d", "--base-filters", "8", "--patch-size", "32,32",
                "--epochs", "25", "--title", f"devnet task {i} ({reward} coins)",
                "--node", self.node_info[0]["rpc_url"], "--node-datadir", str(self.node_dirs[0]),
                "--key-seed", key.seed.hex(), "--keystore", str(self.root / "publisher-keys"),
                "--out", str(self.root / "packed" / f"task{i}"), "--json",
            ]
            result = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if result.returncode != 0:
                raise DevnetError(f"task submission failed: {result.stderr.strip() or result.stdout.strip()}")
            task_id = json.loads(result.stdout.strip().splitlines()[-1])["task_id"]
            self.task_rewards[task_id] = reward * COIN
            ids.append(task_id)
            self.emit(f"submitted task {task_id[:12]} with reward {reward} coins")
        return ids

    # --- watching ------------------------------------------------------------
    def _check_processes(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise DevnetError(f"{proc.name} exited with code {proc.popen.returncode}; see {proc.log_path}:\n{_tail(proc.log_path)}")

    def watch(self, on_block: Callable[[dict], None], *, forever: bool = False) -> list[dict]:
        """Follow node 0 until it has `blocks` blocks (with `forever`, until interrupted); returns them as dicts."""
        seen: list[dict] = []
        client = self.client(0)
        deadline = time.time() + self.opt.timeout
        last_height = 0
        goal = float("inf") if forever else self.opt.blocks
        while last_height < goal:
            if not forever and time.time() > deadline:
                raise DevnetError(f"only {last_height} of {self.opt.blocks} blocks after {self.opt.timeout:.0f} s")
            self._check_processes()
            try:
                height = client.call("getinfo")["height"]
            except RpcError:
                time.sleep(0.5)
                continue
            while last_height < min(height, goal):
                last_height += 1
                block = client.call("getblock", ref=last_height)
                entry = self._describe_block(client, block)
                seen.append(entry)
                on_block(entry)
            time.sleep(0.5)
        return seen

    def describe_height(self, index: int, height: int) -> dict:
        """The block at `height` on node `index`'s best chain."""
        client = self.client(index)
        return self._describe_block(client, client.call("getblock", ref=height))

    def _describe_block(self, client: RpcClient, block: dict) -> dict:
        header = block["header"]
        task_id = header["task_id"]
        standing = task_id == self.params.standing_task.task_id.hex()
        reward = 0 if standing else self.task_rewards.get(task_id)
        if reward is None:
            try:
                reward = client.call("gettask", task_id=task_id)["reward"]
            except RpcError:
                reward = 0
        return {
            "height": block["height"],
            "hash": block["hash"],
            "task": "standing" if standing else task_id,
            "reward": reward,
            "mode": header["task_mode"],
            "winner": header["miner"],
            "dice": header["dice_ppm"] / 1e6,
            "time": header["timestamp"],
        }

    def stop_miners(self) -> None:
        """Stop the miner processes (so no block past the goal is made)."""
        for proc in self.procs:
            if proc.name.startswith("miner"):
                _terminate(proc.popen)

    def tips(self, settle_seconds: float) -> list[str]:
        """Each node's tip, after giving them up to `settle_seconds` to agree."""
        deadline = time.time() + settle_seconds
        while True:
            tips = []
            for i in range(len(self.node_info)):
                try:
                    tips.append(self.client(i).call("getinfo")["tip"])
                except RpcError:
                    tips.append("")
            if len(set(tips)) == 1 or time.time() > deadline:
                return tips
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every process this devnet started (miners first), with stop signals held until all are gone."""
        held = threading.current_thread() is threading.main_thread()
        if held:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for proc in sorted(self.procs, key=lambda p: not p.name.startswith("miner")):
                _terminate(proc.popen)
            self.procs.clear()
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def __enter__(self) -> "Devnet":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate(popen: subprocess.Popen, grace: float = 15.0) -> None:
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait(5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
