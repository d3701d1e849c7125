"""The metrics endpoint of running nodes, scraped over HTTP while a real miner mines a real block."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consensus.genesis import COIN, make_devnet_params
from consensus.work import compute_work_plan
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from fullnode.metrics import NodeMetrics
from miner.events import Reporter
from miner.loop import Miner, MinerConfig
from miner.node import NodeLink
from pouw.encoding import encode
from pouw.keys import KeyPair
from pouw.rpc import RpcClient
from pouw.types import Allocation, Transfer


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"metrics/{name}".encode()).digest())


def scrape(url: str) -> dict[str, float]:
    """sample name{labels} -> value, from the real endpoint."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_are_off_by_default_and_registries_stay_apart(tmp_path):
    a, b = NodeMetrics(), NodeMetrics()
    a.record_fetch(10)
    assert a.bytes_fetched._value.get() == 10 and b.bytes_fetched._value.get() == 0
    node = FullNode(NodeConfig(datadir=tmp_path / "n", params=make_devnet_params()), log_fn=lambda m: None).start()
    try:
        assert node.metrics_server is None and node.describe()["metrics_url"] is None
        assert node.explorer is None and node.describe()["explorer_url"] is None
    finally:
        node.stop()


@pytest.mark.slow
def test_scrape_shows_tip_peers_mempool_claims_verification_and_fetches(tmp_path):
    miner_key, sender = key("miner"), key("sender")
    params = make_devnet_params(int(time.time()) + 10, tuple(Allocation(k.public_key, 10 * COIN) for k in (miner_key, sender)),
                                phase1_seconds=10, phase2_seconds=6)
    a = FullNode(NodeConfig(datadir=tmp_path / "a", params=params, metrics_port=0), log_fn=lambda m: None).start()
    b = FullNode(NodeConfig(datadir=tmp_path / "b", params=params, metrics_port=0, bootstrap=a.p2p_addrs()),
                 log_fn=lambda m: None).start()
    stop = threading.Event()
    thread = None
    try:
        url_a, url_b = a.describe()["metrics_url"], b.describe()["metrics_url"]
        before = scrape(url_a)
        assert before["pouw_tip_height"] == 0 and before["pouw_mempool_transactions"] == 0
        assert before['pouw_claims_verified_total{result=valid}'] == 0
        assert before["pouw_verification_seconds_count"] == 0 and before["pouw_blob_bytes_fetched_total"] == 0

        deadline = time.time() + 30
        while scrape(url_a)["pouw_peers"] < 1 and time.time() < deadline:
            time.sleep(0.3)
        assert scrape(url_a)["pouw_peers"] == 1 and scrape(url_b)["pouw_peers"] == 1

        rpc = RpcClient(a.rpc.url, datadir=a.datadir, timeout=30)
        tx = Transfer(sender.public_key, miner_key.public_key, 1 * COIN, 10_000, 0).signed_by(sender)
        rpc.call("sendtx", hex=encode(tx).hex())
        assert scrape(url_a)["pouw_mempool_transactions"] == 1

        reporter = Reporter(as_json=True, stream=io.StringIO())
        link = NodeLink(RpcClient(a.rpc.url, datadir=a.datadir, timeout=30), reporter)
        miner = Miner(link, MinerConfig(keypair=miner_key, workdir=tmp_path / "miner", threads=1, progress=False), reporter)
        thread = threading.Thread(target=miner.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        deadline = params.genesis_time + 3 * params.slot_seconds
        while not (a.chain.tip_height >= 1 and b.chain.tip_height >= 1) and time.time() < deadline:
            time.sleep(0.3)
        assert a.chain.tip_height >= 1 and b.chain.tip_height >= 1, "no block mined"

        got_a, got_b = scrape(url_a), scrape(url_b)
        assert got_a["pouw_tip_height"] == a.chain.tip_height
        assert got_a["pouw_mempool_transactions"] == 0  # the transfer went into block 1
        assert got_a['pouw_claims_verified_total{result=valid}'] >= 1
        block = a.chain.get_block_at(1)
        work = block.body.work
        # Node a fetched the model and the checkpoints of its verification plan from the miner; node b got them from
        # a link or a. The declared sizes are what arrived (pruning may already have deleted some blobs).
        for got in (got_a, got_b):
            assert got["pouw_blob_bytes_fetched_total"] >= work.model_size
            assert got["pouw_verification_seconds_count"] >= 1 and got["pouw_verification_seconds_sum"] > 0
        # More when a losing claim or a later block was fetched before the scrape.
        plan = compute_work_plan(block, params).checkpoints
        assert got_a["pouw_blob_bytes_fetched_total"] >= work.model_size + sum(work.checkpoints[i].size for i in plan)
    finally:
        stop.set()
        if thread is not None:
            thread.join(60)
        b.stop()
        a.stop()
