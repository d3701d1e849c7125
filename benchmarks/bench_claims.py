"""A Phase 2 flooded with false claims against one real node: does the honest block still win its slot, and at what cost?

Run: python benchmarks/bench_claims.py [--liars 999] [--trained-liars 20] [--phase1 30] [--phase2 30] [--quick] [--json]

One real node (`pouw node start` in its own process, verification workers
as its defaults size them) on a devnet whose genesis funds an honest miner
and the trained liars. This process builds real blocks (real training,
real blobs served over HTTP from here) and delivers commits and claims over
the node's RPC in real time, slot by slot:

  height 1  the honest miner's block; it carries the Bond transactions of
            the honest miner and of the trained liars.
  height 2  the honest claim alone: the baseline.
  height 3  the flood: LIARS claims from LIARS fresh keys, each claiming a
            Dice above the honest one, unbonded (keys are free, bonds are
            not). They reuse the honest trajectory, the cheapest lie to
            make; the honest claim comes last. The node pools at most
            MAX_UNBONDED_CLAIMS of them ("admitted").
  height 4  TRAINED liars, bonded, each with a real trajectory of its own and
            a claimed Dice above the honest one and above what its model
            scores: the node judges at most MAX_CLAIMS_VERIFIED_PER_SLOT
            claims a slot, bonded ones first, so they can delay the height
            by ceil(TRAINED / budget) slots, each judged liar open to losing
            its bond (the next blocks carry the evidence).

For each height: when the honest block connected (seconds into Phase 2,
and the slot's end), claims judged, and the node's bytes fetched and CPU
seconds (its process and its verification workers), per judged claim and
against the baseline, all from this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from consensus.assemble import complete_block, make_block_template, make_commit  # noqa: E402
from consensus.chainstate import ChainState  # noqa: E402
from consensus.clock import get_phase2_start, get_slot_start  # noqa: E402
from consensus.fixtures import make_keypair  # noqa: E402
from consensus.genesis import COIN, make_devnet_params  # noqa: E402
from consensus.rules import compute_training_seed, get_scheduled_task_id  # noqa: E402
from consensus.work import get_work_data, make_checkpoint_refs  # noqa: E402
from fullnode.config import save_params  # noqa: E402
from fullnode.core import MAX_CLAIMS_VERIFIED_PER_SLOT  # noqa: E402
from pouw.blobserve import BlobServer  # noqa: E402
from pouw.blobstore import BlobStore  # noqa: E402
from pouw.encoding import encode  # noqa: E402
from pouw.rpc import RpcClient  # noqa: E402
from pouw.seg.dice import evaluate  # noqa: E402
from pouw.seg.train import train  # noqa: E402
from pouw.types import MODE_NORMAL, Allocation, Bond, Claim, WorkProof  # noqa: E402
from realblocks import mine_standing_block  # noqa: E402

HONEST = make_keypair("bench-claims-honest")
BOND = 10 * COIN
HONEST_SECONDS = 8.0
LIAR_SECONDS = 2.5


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def accept_all(candidate) -> None:
    """The bench's own mirror of the chain: it built these blocks, the node is what is measured."""


# --- the node under test ----------------------------------------------------------------


class Node:
    """A `pouw node start` process and what it costs."""

    def __init__(self, root: Path, params):
        self.datadir = root / "node"
        save_params(self.datadir, params)
        self.log = open(root / "node.log", "ab")
        args = [sys.executable, "-m", "pouw.cli", "node", "start", "--datadir", str(self.datadir),
                "--params", str(self.datadir / "params.json"), "--rpc-port", "0", "--port", "0", "--metrics-port", "0"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not (self.datadir / "node.json").exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the node did not start (see {root / 'node.log'})")
            time.sleep(0.2)
        time.sleep(0.3)
        info = json.loads((self.datadir / "node.json").read_text())
        self.rpc = RpcClient(info["rpc_url"], datadir=self.datadir, timeout=60)
        self.metrics_url = info["metrics_url"].rstrip("/")
        if not self.metrics_url.endswith("/metrics"):
            self.metrics_url += "/metrics"

    def cpu_seconds(self) -> float:
        """User + system CPU of the node, its living children (verification workers) and its reaped ones."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == self.proc.pid:
                total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
            elif ppid == self.proc.pid:
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r'^(pouw_blob_bytes_fetched_total|pouw_claims_verified_total)(\{result="(\w+)"\})?\s+(\S+)$', line)
            if match:
                out[match.group(1) + (":" + match.group(3) if match.group(3) else "")] = float(match.group(4))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# --- building the contests ------------------------------------------------------------------


@dataclasses.dataclass
class Contest:
    """One height: the commits and claims delivered in its slot, and the block that should win."""

    height: int
    slot: int
    label: str
    honest: object
    commits: list
    claims: list
    """Liars' claims first, the honest claim last."""
    bonded_liars: int = 0


def copycat_liars(state, params, honest_block, keys, slot):
    """Claims that reuse the honest trajectory under other keys, each claiming a Dice above the honest one."""
    work = honest_block.body.work
    task_id = get_scheduled_task_id(state.get_status())
    template = make_block_template(state, params, ())
    timestamp = get_phase2_start(params, slot) + 1
    out = []
    for i, kp in enumerate(keys):
        claim = min(1_000_000, work.dice_ppm + params.dice_tolerance_ppm + 1 + (i % 2000))
        commit = make_commit(kp, state.get_status().height + 1, slot, task_id, work.model_digest, work.checkpoints)
        out.append(complete_block(template, params, kp, slot=slot, timestamp=timestamp, commit=commit,
                                  work=dataclasses.replace(work, dice_ppm=claim), task=None))
    return out


def trained_liars(state, params, keys, slot, blobs, link, workdir, above_ppm):
    """Claims from real, short trainings of their own, each claiming more than its model scores and than `above_ppm`."""
    status = state.get_status()
    data = get_work_data(None, params, status.tip_hash, MODE_NORMAL, {}, blobs, workdir)
    task_id = get_scheduled_task_id(status)
    template = make_block_template(state, params, ())
    timestamp = get_phase2_start(params, slot) + 1
    out = []
    for i, kp in enumerate(keys):
        seed = compute_training_seed(status.tip_hash, kp.public_key)
        result = train(data.model, data.train, data.train_set, seed, time.time() + LIAR_SECONDS, blobs, progress=False,
                       num_threads=1)
        blobs.put_bytes(result.model_file)
        measured = evaluate(result.model_file, data.model, data.score_set).dice_ppm
        claim = min(1_000_000, max(measured, above_ppm) + 5 * params.dice_tolerance_ppm + i)
        if claim - measured <= params.dice_tolerance_ppm:
            raise SystemExit(f"trained liar {i} scores {measured} ppm: too close to 1 to lie above it; train it less")
        refs = make_checkpoint_refs(result.checkpoint_digests, result.update_norms, blobs)
        commit = make_commit(kp, status.height + 1, slot, task_id, result.model_digest, refs)
        work = WorkProof(result.model_digest, len(result.model_file), refs, (link,), claim)
        out.append(complete_block(template, params, kp, slot=slot, timestamp=timestamp, commit=commit, work=work, task=None))
        say(f"  trained liar {i + 1}/{len(keys)}: scores {measured / 1e6:.4f}, claims {claim / 1e6:.4f}")
    return out


def build(root: Path, liars: int, trained: int, phase1: int, phase2: int):
    """Params, the blob store and server, and the four contests (every model trained before the first slot)."""
    trained_keys = [make_keypair(f"bench-claims-trained-{i}") for i in range(trained)]
    copy_keys = [make_keypair(f"bench-claims-liar-{i}") for i in range(liars)]
    slot_len = phase1 + phase2
    setup = 60 + 4 * HONEST_SECONDS * 2 + trained * (LIAR_SECONDS + 2) * 2
    genesis = int(time.time()) - slot_len
    params = make_devnet_params(genesis, tuple(Allocation(k.public_key, 1000 * COIN) for k in [HONEST, *trained_keys]),
                                phase1_seconds=phase1, phase2_seconds=phase2)
    first = math.ceil(setup / slot_len) + 2
    slots = {1: first, 2: first + 1, 3: first + 2, 4: first + 3}
    blobs = BlobStore(root / "blobs")
    server = BlobServer(blobs).start()
    link = server.url
    mirror = ChainState.open(root / "mirror", params)
    contests = []
    bonds = tuple(Bond(k.public_key, BOND, 10_000, 0).signed_by(k) for k in [HONEST, *trained_keys])
    for height in (1, 2, 3, 4):
        state = mirror.state()
        say(f"height {height}: training the honest model ({HONEST_SECONDS:.0f} s)")
        honest = mine_standing_block(state, params, HONEST, blobs, link, root / "work", slot=slots[height],
                                     transactions=bonds if height == 1 else (), seconds=HONEST_SECONDS)
        liars_blocks, label, bonded = [], "baseline: the honest claim alone", 0
        if height == 1:
            label = "bonds (the honest miner's and the trained liars')"
        if height == 3:
            say(f"height 3: {liars} unbonded liars")
            liars_blocks = copycat_liars(state, params, honest, copy_keys, slots[3])
            label = f"flood: {liars} unbonded liars above the honest claim"
        if height == 4 and trained:
            say(f"height 4: {trained} trained, bonded liars")
            liars_blocks = trained_liars(state, params, trained_keys, slots[4], blobs, link, root / "work",
                                         honest.body.work.dice_ppm)
            label, bonded = f"{trained} bonded liars with real trajectories above the honest claim", trained
        claims = [*liars_blocks, honest]
        contests.append(Contest(height, slots[height], label, honest, [b.body.commit for b in claims], claims, bonded))
        result = mirror.process_new_block(honest, get_phase2_start(params, slots[height]) + 2, accept_all)
        assert result.is_valid, result.reason
        if height == 4 and not trained:
            contests.pop()
    mirror.close()
    return params, blobs, server, contests


# --- running a contest in real time -----------------------------------------------------------


def wait_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.5))


def deliver(rpc_pool: ThreadPoolExecutor, node: Node, method: str, items: list[bytes]) -> int:
    """Send every item over RPC (four at a time); returns how many the node accepted."""

    def send(raw: bytes) -> bool:
        try:
            node.rpc.call(method, hex=raw.hex())
            return True
        except Exception:
            return False

    return sum(rpc_pool.map(send, items))


def run_contest(node: Node, params, contest: Contest, rpc_pool: ThreadPoolExecutor) -> dict:
    slot = contest.slot
    phase1, phase2, end = get_slot_start(params, slot), get_phase2_start(params, slot), get_slot_start(params, slot + 1)
    if time.time() > phase1:
        raise SystemExit(f"setup ran past slot {slot}'s start; rerun with fewer liars or longer phases")
    wait_until(phase1 + 0.5)
    before = (node.cpu_seconds(), node.metrics())
    commits = deliver(rpc_pool, node, "submitcommit", [encode(c) for c in contest.commits])
    wait_until(phase2 + 1.2)
    claims = deliver(rpc_pool, node, "submitclaim", [encode(Claim(b)) for b in contest.claims])
    admitted = (node.cpu_seconds(), time.time() - phase2)
    target = contest.honest.hash.hex()
    give_up = end + (math.ceil(contest.bonded_liars / MAX_CLAIMS_VERIFIED_PER_SLOT) + 1) * (end - phase1)
    connected_at = None
    while time.time() < give_up:
        info = node.rpc.call("getinfo")
        if info["height"] >= contest.height:
            connected_at = time.time()
            break
        time.sleep(0.2)
    if connected_at is None:
        raise SystemExit(f"height {contest.height}: the honest block never connected (see the node's log)")
    tip = node.rpc.call("getblock", ref=contest.height)
    won = tip["hash"] == target
    slot_len = end - phase1
    slots_late = int((connected_at - params.genesis_time) // slot_len) - slot
    wait_until(get_slot_start(params, slot + slots_late + 1) - 0.5)  # what the node judges after the win counts too
    after = (node.cpu_seconds(), node.metrics())
    judged = {k.split(":")[1]: after[1].get(k, 0) - before[1].get(k, 0) for k in after[1] if k.startswith("pouw_claims_verified")}
    n_judged = sum(judged.values())
    fetched = after[1].get("pouw_blob_bytes_fetched_total", 0) - before[1].get("pouw_blob_bytes_fetched_total", 0)
    cpu = after[0] - before[0]
    return {
        "height": contest.height, "what": contest.label, "commits_accepted": commits, "claims_accepted": claims,
        "claims_sent": len(contest.claims), "honest_won": won,
        "connected_s_into_phase2": round(connected_at - phase2 - slots_late * slot_len, 1),
        "slots_late": slots_late, "phase2_s": params.phase2_seconds,
        "before_slot_end": slots_late == 0 and connected_at < end,
        "claims_judged": int(n_judged), "judged_valid": int(judged.get("valid", 0)), "judged_invalid": int(judged.get("invalid", 0)),
        "bytes_fetched": int(fetched), "node_cpu_s": round(cpu, 2),
        "admission_cpu_s": round(admitted[0] - before[0], 2), "admission_s_into_phase2": round(admitted[1], 1),
        "bytes_per_judged_claim": int(fetched / n_judged) if n_judged else None,
        "cpu_s_per_judged_claim": round(cpu / n_judged, 3) if n_judged else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--liars", type=int, default=999, help="unbonded liars in the flood (height 3)")
    ap.add_argument("--trained-liars", type=int, default=20, help="bonded liars with real trajectories (height 4; 0: skip)")
    ap.add_argument("--phase1", type=int, default=30)
    ap.add_argument("--phase2", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="200 unbonded and 4 bonded liars, 20 s phases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.liars, args.trained_liars, args.phase1, args.phase2 = 200, 4, 20, 20
    with tempfile.TemporaryDirectory(prefix="pouw-bench-claims-") as tmp:
        root = Path(tmp)
        params, blobs, server, contests = build(root, args.liars, args.trained_liars, args.phase1, args.phase2)
        node = Node(root, params)
        rows = []
        try:
            with ThreadPoolExecutor(4) as rpc_pool:
                for contest in contests:
                    say(f"slot {contest.slot}: height {contest.height}, {contest.label}")
                    rows.append(run_contest(node, params, contest, rpc_pool))
                    say(f"  -> {rows[-1]}")
        finally:
            node.stop()
            server.stop()
    base = next(r for r in rows if r["height"] == 2)
    for row in rows:
        row["bytes_vs_baseline"] = round(row["bytes_fetched"] / base["bytes_fetched"], 2) if base["bytes_fetched"] else None
        row["cpu_vs_baseline"] = round(row["node_cpu_s"] / base["node_cpu_s"], 2) if base["node_cpu_s"] else None
    report = {"budget_per_slot": MAX_CLAIMS_VERIFIED_PER_SLOT, "contests": rows}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"claims judged per slot at most {MAX_CLAIMS_VERIFIED_PER_SLOT}; Phase 2 {args.phase2} s; one node, verification workers by default")
    print(f"{'height':>6} {'claims':>6} {'admitted':>8} {'judged':>6} {'won':>4} {'connected':>18} {'MB fetched':>10} {'x base':>6} "
          f"{'CPU s':>6} {'x base':>6} {'CPU s/judged':>12} {'admit CPU s':>11}  what")
    for r in rows:
        when = (f"+{r['connected_s_into_phase2']:.1f}s of {r['phase2_s']}s" if r["slots_late"] == 0
                else f"{r['slots_late']} slot(s) late")
        print(f"{r['height']:>6} {r['claims_sent']:>6} {r['claims_accepted']:>8} {r['claims_judged']:>6} {'yes' if r['honest_won'] else 'NO':>4} {when:>18} "
              f"{r['bytes_fetched'] / 1e6:>10.2f} {r['bytes_vs_baseline'] or 0:>6.2f} {r['node_cpu_s']:>6.1f} {r['cpu_vs_baseline'] or 0:>6.2f} "
              f"{r['cpu_s_per_judged_claim'] or 0:>12.3f} {r['admission_cpu_s']:>11.1f}  {r['what']}")


if __name__ == "__main__":
    main()
