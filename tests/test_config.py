"""pouw.conf: its keys are the flags of `pouw node start`, flags win, and bad files are clear errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from consensus.genesis import make_devnet_params
from fullnode.config import CONF_KEYS, NOT_IN_CONF, ConfigError, parse_conf, read_conf_file, save_params
from pouw.cli.node import get_conf_key, start
from pouw.rpc import RpcClient


def test_the_conf_keys_are_the_flags_of_node_start():
    flags = {get_conf_key(p) for p in start.params if isinstance(p, click.Option)}
    assert flags - set(NOT_IN_CONF) == set(CONF_KEYS)
    assert set(NOT_IN_CONF) <= flags


def test_parse_types_values_and_resolves_paths(tmp_path):
    text = """
# a comment, then blank lines

network = devnet
params = nets/params.json
rpc-port = 8700
bootstrap = /ip4/127.0.0.1/tcp/1/p2p/a
bootstrap=/ip4/127.0.0.1/tcp/2/p2p/b
assume-valid = abababababababababababababababababababababababababababababababab
claim-wait = 2.5
json = yes
explorer-port = 0
metrics-host = 0.0.0.0
"""
    conf = parse_conf(text, "pouw.conf", tmp_path)
    assert conf == {
        "network": "devnet",
        "params": tmp_path / "nets/params.json",
        "rpc-port": 8700,
        "bootstrap": ["/ip4/127.0.0.1/tcp/1/p2p/a", "/ip4/127.0.0.1/tcp/2/p2p/b"],
        "assume-valid": "abababababababababababababababababababababababababababababababab",
        "claim-wait": 2.5,
        "json": True,
        "explorer-port": 0,
        "metrics-host": "0.0.0.0",
    }
    assert parse_conf("params = /abs/p.json\njson = 0", "x", tmp_path) == {"params": Path("/abs/p.json"), "json": False}


@pytest.mark.parametrize("text, message", [
    ("rpcport = 8645", "line 1: unknown key 'rpcport'; the keys are network, params"),
    ("\n\nrpc-port = 70000", "line 3: rpc-port must be a port number from 0 to 65535 (got '70000')"),
    ("rpc-port = eight", "rpc-port must be a port number"),
    ("assume-valid = some", "assume-valid must be a 64-hex-digit block hash"),
    ("network = testnet", "network must be one of main, devnet"),
    ("claim-wait = -1", "claim-wait must be a number of seconds from 0"),
    ("claim-wait = soon", "claim-wait must be a number of seconds"),
    ("json = maybe", "json must be 1 or 0"),
    ("host =", "host is empty"),
    ("rpc-port = 1\nrpc-port = 2", "line 2: rpc-port is set twice"),
    ("datadir = /srv/pouw", "datadir cannot be set in pouw.conf"),
    ("rpc-port 8645", "line 1: expected `key = value`"),
    ("[main]", "expected `key = value`"),
])
def test_bad_lines_are_clear_errors(text, message, tmp_path):
    with pytest.raises(ConfigError, match=None) as err:
        parse_conf(text, "/data/pouw.conf", tmp_path)
    assert message in str(err.value)
    assert "/data/pouw.conf" in str(err.value)


def test_conf_file_reading(tmp_path):
    assert read_conf_file(tmp_path / "absent.conf") == {}
    with pytest.raises(ConfigError, match="no settings file"):
        read_conf_file(tmp_path / "absent.conf", required=True)
    (tmp_path / "bin.conf").write_bytes(b"\xff\xfe rpc-port = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_conf_file(tmp_path / "bin.conf")


def test_node_start_refuses_a_bad_conf_before_starting_anything(tmp_path):
    datadir = tmp_path / "d"
    datadir.mkdir()
    (datadir / "pouw.conf").write_text("assume-valid = abababababababababababababababababababababababababababababababab\nrpcport = 1\n")
    result = CliRunner().invoke(start, ["--datadir", str(datadir)])
    assert result.exit_code == 1
    assert f"{datadir / 'pouw.conf'} line 2: unknown key 'rpcport'" in result.output
    assert not (datadir / "chain").exists() and not (datadir / "node.json").exists()
    result = CliRunner().invoke(start, ["--datadir", str(datadir), "--conf", str(tmp_path / "missing.conf")])
    assert result.exit_code == 1 and "no settings file at" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_node_file(datadir: Path, proc: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            info = json.loads((datadir / "node.json").read_text())
            if info.get("rpc_url"):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("the node did not start")


@pytest.mark.slow
def test_a_running_node_takes_its_conf_and_flags_win(tmp_path):
    datadir = tmp_path / "node"
    datadir.mkdir()
    save_params(tmp_path / "net", make_devnet_params(int(time.time()) + 3600))
    conf_rpc, flag_rpc, explorer, metrics = free_port(), free_port(), free_port(), free_port()
    (datadir / "pouw.conf").write_text(
        "# written by the operator\n"
        "network = devnet\n"
        "params = ../net/params.json\n"
        f"rpc-port = {conf_rpc}\n"
        f"explorer-port = {explorer}\n"
        f"metrics-port = {metrics}\n"
        "assume-valid = abababababababababababababababababababababababababababababababab\n"
        "json = 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "pouw.cli", "node", "start", "--datadir", str(datadir), "--rpc-port", str(flag_rpc)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = wait_node_file(datadir, proc)
        assert info["rpc_url"] == f"http://127.0.0.1:{flag_rpc}"  # the flag won over the file
        assert info["explorer_url"] == f"http://127.0.0.1:{explorer}/"  # the file applied where no flag was given
        assert info["metrics_url"] == f"http://127.0.0.1:{metrics}/metrics"
        assert info["network"] == "devnet"
        rpc = RpcClient(info["rpc_url"], datadir=datadir, timeout=10)
        assert rpc.call("getinfo")["network"] == "devnet"
        first = proc.stdout.readline()
        assert json.loads(first)["event"].startswith("node started")  # json = 1: JSON log lines
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
