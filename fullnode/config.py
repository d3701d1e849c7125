"""A node's configuration and data directory layout.

    <datadir>/params.json   the network's ChainParams (hex of their encoding) and name
    <datadir>/chain/        LevelDB chain database
    <datadir>/blobs/        content-addressed blob store
    <datadir>/work/         decrypted task datasets (a cache; safe to delete; pruned with final tasks)
    <datadir>/prune.json    how far the best chain's blobs are pruned
    <datadir>/p2p.key       the node's libp2p identity seed (mode 0600)
    <datadir>/taskkeys/     keys the node reveals for its publishers (mode 0700)
    <datadir>/.cookie       RPC cookie while the node runs
    <datadir>/node.json     the running node's ports and addresses (for tools)
    <datadir>/pouw.conf     optional settings, `key = value` lines (docs/operator.md)
    <datadir>/explorer/     the explorer's cache of task figures (safe to delete)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pouw.encoding import DecodeError, decode, encode
from pouw.types import ChainParams

NETWORKS = ("main", "devnet")
"""The networks `pouw node start --network` knows."""
CONF_NAME = "pouw.conf"
"""The settings file a node reads from its data directory."""


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
    """Address the p2p host and the blob server bind to (loopback by default)."""
    rpc_host: str = "127.0.0.1"
    """Address the JSON-RPC server binds to (loopback by default, whatever `host` is: RPC is for the operator)."""
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
    explorer_port: int | None = None
    """Port of the read-only explorer web page (None: no explorer; 0: any free port)."""
    explorer_host: str = "127.0.0.1"
    """Address the explorer binds to (loopback by default, whatever `host` is)."""
    metrics_port: int | None = None
    """Port of the Prometheus metrics endpoint (None: none; 0: any free port)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to."""
    verify_workers: int = 0
    """Worker processes that verify claims and blocks (0: in the node's own worker thread)."""
    verify_device: str = "cpu"
    """Where verification runs: "cpu" or "cuda:N"."""
    prune: bool = True
    """Delete blobs nobody needs from this node any more (losing claims after their slot, the winner's checkpoints and
    its task's data once final; the winning model stays); False (`--keep-all`) keeps every blob."""
    prune_keep_blocks: int = 288
    """Recent best-chain blocks whose verification blobs a pruning node keeps for peers that sync from it."""


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


def is_device_name(text: str) -> bool:
    """True for "cpu" and "cuda:N"."""
    if text == "cpu":
        return True
    kind, _, index = text.partition(":")
    return kind == "cuda" and index.isdigit()


# --- pouw.conf ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConfKey:
    """What one pouw.conf key accepts."""

    kind: str
    """"str", "port", "count" (a number or auto), "device" (cpu, cuda:N), "seconds", "bool", "path", "hash" (64 hex
    digits) or "choice"."""
    choices: tuple[str, ...] = ()
    """The accepted words of a "choice" key."""
    repeatable: bool = False
    """May appear on several lines (each adds a value)."""


CONF_KEYS: dict[str, ConfKey] = {
    "network": ConfKey("choice", NETWORKS),
    "params": ConfKey("path"),
    "host": ConfKey("str"),
    "rpc-host": ConfKey("str"),
    "verify-workers": ConfKey("count"),
    "verify-device": ConfKey("device"),
    "port": ConfKey("port"),
    "rpc-port": ConfKey("port"),
    "blob-port": ConfKey("port"),
    "bootstrap": ConfKey("str", repeatable=True),
    "assume-valid": ConfKey("hash"),
    "claim-wait": ConfKey("seconds"),
    "json": ConfKey("bool"),
    "explorer-port": ConfKey("port"),
    "explorer-host": ConfKey("str"),
    "metrics-port": ConfKey("port"),
    "metrics-host": ConfKey("str"),
    "prune": ConfKey("bool"),
}
"""The keys of pouw.conf: the long flags of `pouw node start`, without dashes in front."""

NOT_IN_CONF = {
    "datadir": "the data directory holds pouw.conf, so it is chosen on the command line (--datadir)",
    "conf": "pouw.conf cannot name another settings file",
}
MAX_CONF_BYTES = 1 << 20
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _conf_value(key: str, spec: ConfKey, text: str, base: Path) -> object:
    """One value of `key`, typed; ValueError says what is wrong with it."""
    if spec.kind == "str":
        if not text:
            raise ValueError("is empty")
        return text
    if spec.kind == "port":
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            raise ValueError("must be a port number from 0 to 65535")
        return int(text)
    if spec.kind == "count":
        if text == "auto":
            return text
        if not text.isdigit() or int(text) > 1024:
            raise ValueError("must be a number from 0 to 1024, or auto")
        return int(text)
    if spec.kind == "device":
        if not is_device_name(text):
            raise ValueError("must be cpu or cuda:N")
        return text
    if spec.kind == "seconds":
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
        if not 0 <= value < 1e6:
            raise ValueError("must be a number of seconds from 0")
        return value
    if spec.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("must be 1 or 0 (or true/false, yes/no, on/off)")
    if spec.kind == "hash":
        value = text.lower().removeprefix("0x")
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be a 64-hex-digit block hash")
        return value
    if spec.kind == "path":
        if not text:
            raise ValueError("is empty")
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path
    if text not in spec.choices:
        raise ValueError(f"must be one of {', '.join(spec.choices)}")
    return text


def parse_conf(text: str, source: str, base: Path) -> dict[str, object]:
    """Settings from pouw.conf text: key -> typed value (a list for repeatable keys).

    Lines are `key = value`; blank lines and lines starting with `#` are
    skipped. Relative paths are taken from `base` (the file's folder). An
    unknown key, a key given twice, a line without `=` or a bad value is a
    ConfigError naming the file and line.
    """
    out: dict[str, object] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {lineno}"
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: expected `key = value`, got {line[:80]!r}")
        if key in NOT_IN_CONF:
            raise ConfigError(f"{where}: {key} cannot be set in {CONF_NAME}: {NOT_IN_CONF[key]}")
        spec = CONF_KEYS.get(key)
        if spec is None:
            raise ConfigError(f"{where}: unknown key {key!r}; the keys are {', '.join(CONF_KEYS)}")
        try:
            typed = _conf_value(key, spec, value, base)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key} {exc} (got {value[:80]!r})") from None
        if spec.repeatable:
            out.setdefault(key, []).append(typed)
        elif key in out:
            raise ConfigError(f"{where}: {key} is set twice")
        else:
            out[key] = typed
    return out


def read_conf_file(path: Path, *, required: bool = False) -> dict[str, object]:
    """The settings in `path` ({} when it does not exist and is not `required`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONF_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONF_BYTES} bytes; is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"no settings file at {path}") from None
        return {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_conf(text, str(path), path.parent)
