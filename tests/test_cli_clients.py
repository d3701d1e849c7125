"""`pouw wallet` and `pouw chain` through click's CliRunner against a real full node on loopback."""

from __future__ import annotations

import json
import stat
import time

import click
import pytest
from click.testing import CliRunner

from consensus.genesis import COIN, make_devnet_params
from pouw.cli import main
from pouw.cli.common import format_coins, parse_coins
from pouw.cli.publish import COMMANDS, parse_patch
from pouw.keys import KeyPair
from pouw.types import Allocation, Transfer

from test_miner import NodeUnderTest


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("POUW_PASSPHRASE", "pw for tests")
    monkeypatch.delenv("POUW_NODE", raising=False)
    runner = CliRunner()
    key_file = tmp_path / "wallet" / "wallet.key"
    res = runner.invoke(main, ["wallet", "new", "--key-file", str(key_file), "--fast-kdf", "--json"])
    assert res.exit_code == 0, res.output
    address = json.loads(res.output)["address"]
    params = make_devnet_params(genesis_time=int(time.time()) - 100, allocations=(Allocation(bytes.fromhex(address), 100 * COIN),))
    node = NodeUnderTest(tmp_path / "node", params)
    yield runner, node, key_file, address
    node.close()


def node_args(node: NodeUnderTest) -> list[str]:
    return ["--node", node.url, "--datadir", str(node.datadir)]


def test_wallet_new_writes_a_private_key_file_and_refuses_to_overwrite(env):
    runner, _node, key_file, address = env
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    res = runner.invoke(main, ["wallet", "address", "--key-file", str(key_file)])
    assert res.output.strip() == address
    res = runner.invoke(main, ["wallet", "new", "--key-file", str(key_file), "--fast-kdf"])
    assert res.exit_code == 1 and "already exists" in res.output


def test_wallet_send_and_balance(env):
    runner, node, key_file, address = env
    res = runner.invoke(main, ["wallet", "balance", "--key-file", str(key_file), *node_args(node)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("100 coins")

    to = KeyPair.from_seed(b"\x05" * 32).address
    res = runner.invoke(main, ["wallet", "send", to, "2.5", "--fee", "0.001", "--key-file", str(key_file), "--json",
                               *node_args(node)])
    assert res.exit_code == 0, res.output
    sent = json.loads(res.output)
    assert sent["amount"] == 250_000_000 and sent["nonce"] == 0
    [tx] = node.node.core.txpool.get_account_txs(bytes.fromhex(address))
    assert isinstance(tx, Transfer) and tx.recipient.hex() == to and tx.fee == 100_000 and tx.is_signature_valid()

    # A second send uses the next pending nonce.
    res = runner.invoke(main, ["wallet", "send", to, "1", "--key-file", str(key_file), "--json", *node_args(node)])
    assert json.loads(res.output)["nonce"] == 1
    res = runner.invoke(main, ["wallet", "balance", address, "--json", *node_args(node)])
    assert json.loads(res.output)["pending_nonce"] == 2

    # Mined into a block, the recipient holds the coins.
    node.add_standing_block(KeyPair.from_seed(b"\x09" * 32), slot=node.chain.state().get_status().min_slot)
    res = runner.invoke(main, ["wallet", "balance", to, "--json", *node_args(node)])
    assert json.loads(res.output)["balance"] == 350_000_000


def test_wallet_send_errors_are_one_line(env, monkeypatch):
    runner, node, key_file, _address = env
    to = KeyPair.from_seed(b"\x05" * 32).address
    res = runner.invoke(main, ["wallet", "send", to, "5000", "--key-file", str(key_file), *node_args(node)])
    assert res.exit_code == 1 and res.output.startswith("Error: the node refused:") and res.output.count("\n") == 1
    monkeypatch.setenv("POUW_PASSPHRASE", "wrong")
    res = runner.invoke(main, ["wallet", "send", to, "1", "--key-file", str(key_file), *node_args(node)])
    assert res.exit_code == 1 and "wrong passphrase" in res.output
    res = runner.invoke(main, ["wallet", "send", "abc", "1", "--key-file", str(key_file), *node_args(node)])
    assert res.exit_code == 2 and "address must be 64 hex digits" in res.output


def test_unreachable_node_is_a_clear_error(env, tmp_path):
    runner, _node, key_file, _address = env
    res = runner.invoke(main, ["chain", "info", "--node", "http://127.0.0.1:1", "--datadir", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert "cannot reach the pouw node at http://127.0.0.1:1" in res.output and "pouw node start" in res.output


def test_chain_info_and_block(env):
    runner, node, _key_file, _address = env
    block = node.add_standing_block(KeyPair.from_seed(b"\x09" * 32), slot=node.chain.state().get_status().min_slot)
    res = runner.invoke(main, ["chain", "info", *node_args(node)])
    assert res.exit_code == 0 and "height   1" in res.output and "devnet" in res.output
    res = runner.invoke(main, ["chain", "block", "1", "--json", *node_args(node)])
    assert json.loads(res.output)["hash"] == block.hash.hex()
    res = runner.invoke(main, ["chain", "block", block.hash.hex(), *node_args(node)])
    assert res.exit_code == 0 and f"block {block.hash.hex()}" in res.output
    res = runner.invoke(main, ["chain", "block", "99", *node_args(node)])
    assert res.exit_code == 1 and "no block 99" in res.output
    res = runner.invoke(main, ["chain", "block", "xyz", *node_args(node)])
    assert res.exit_code == 2


def test_task_commands_without_results(env):
    runner, node, _key_file, _address = env
    group = click.Group("task", commands={c.name: c for c in COMMANDS})
    res = runner.invoke(group, ["list", *node_args(node)])
    assert res.exit_code == 0 and "standing task" in res.output
    res = runner.invoke(group, ["status", "00" * 32, *node_args(node)])
    assert res.exit_code == 1 and "no task 00" in res.output


def test_amounts_and_patch_parsing():
    assert parse_coins("1.5") == 150_000_000 and parse_coins("0.00000001") == 1
    assert format_coins(150_000_000) == "1.5" and format_coins(100 * COIN) == "100" and format_coins(1) == "0.00000001"
    for bad in ("-1", "abc", "0.000000001", "nan"):
        with pytest.raises(click.BadParameter):
            parse_coins(bad)
    assert parse_patch("64x64x32") == (64, 64, 32) and parse_patch("32,32") == (32, 32)
    with pytest.raises(click.BadParameter):
        parse_patch("64")
