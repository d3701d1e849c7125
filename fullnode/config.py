"""A node's configuration and data directory layout.

    <datadir>/params.json   the network's ChainParams (hex of their encoding) and name
    <datadir>/chain/        LevelDB chain database
    <datadir>/blobs/        content-addressed blob store
    <datadir>/work/         decrypted task datasets (a cache; safe to delete)
    <datadir>/p2p.key       the node's libp2p identity seed (mode 0600)
    <datadir>/taskkeys/     keys the node reveals for its publishers (mode 0700)
    <datadir>/.cookie       RPC cookie while the node runs
    <datadir>/node.json     the running node's ports and addresses (for tools)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pouw.encoding import DecodeError, decode, encode
from pouw.types import ChainParams

class ConfigError(Exception):
    """A node configuration or data directory that cannot be used."""


@dataclass
class NodeConfig:
    """How to run one full node."""

    datadir: Path
    """Where the node keeps everything."""
    params: ChainParams
    """The network."""
    host: str = "127.0.0.1"
    """Address every listener binds to (loopback by default)."""
    p2p_port: int = 0
    """libp2p TCP port (0: any free port)."""
    rpc_port: int = 0
    """JSON-RPC port (0: any free port)."""
    blob_port: int = 0
    """Blob HTTP server port (0: any free port)."""
    bootstrap: list[str] = field(default_factory=list)
    """Multiaddrs of peers to connect to at start."""
    assume_valid: bytes | None = None
    """A block known good (as bitcoind's -assumevalid): its ancestors buried deeper than the finality window skip the
    Dice recomputation during sync; every other block, and every block near the tip, is fully verified."""
    claim_wait_seconds: float | None = None
    """How long into Phase 2 to gather claims before verifying (default: a third of Phase 2)."""


def save_params(datadir: Path, params: ChainParams) -> Path:
    """Write the network parameters into a data directory."""
    datadir.mkdir(parents=True, exist_ok=True)
    path = datadir / "params.json"
    path.write_text(json.dumps({"network": params.name, "params_hex": encode(params).hex()}, indent=1))
    return path


def load_params_file(path: Path) -> ChainParams:
    """Read parameters written by save_params (or `pouw devnet`)."""
    try:
        doc = json.loads(Path(path).read_text())
        return decode(ChainParams, bytes.fromhex(doc["params_hex"]))
    except FileNotFoundError:
        raise ConfigError(f"no network parameters at {path}") from None
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise ConfigError(f"network parameters in {path} are damaged: {exc}") from None


def load_or_create_p2p_seed(datadir: Path) -> bytes:
    """The node's persistent libp2p identity seed."""
    path = datadir / "p2p.key"
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ConfigError(f"{path} is damaged (expected 32 bytes); delete it to make a new identity")
        return seed
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(seed)
    return seed


def write_node_file(datadir: Path, info: dict) -> None:
    """Publish the running node's addresses for local tools (CLI, devnet, miner)."""
    tmp = datadir / "node.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, datadir / "node.json")


def read_node_file(datadir: Path) -> dict:
    """The running node's addresses, as written at start."""
    try:
        return json.loads((Path(datadir) / "node.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"no running node found in {datadir} (node.json is missing)") from None
    except ValueError as exc:
        raise ConfigError(f"{datadir}/node.json is damaged: {exc}") from None
