"""Helpers shared by the client commands: node and key options, output, errors, amounts.

Defaults (each also from an environment variable, so scripts set them once):

| option | environment | default |
|---|---|---|
| `--node URL` | `POUW_NODE` | `http://127.0.0.1:8645` |
| `--datadir DIR` / `--node-datadir DIR` (the node's, for its RPC cookie) | `POUW_DATADIR` | `~/.pouw/main` (a devnet node: `~/.pouw/devnet`) |
| `--key-file FILE` | `POUW_KEY_FILE` | `~/.pouw/wallet.key` |
| passphrase | `POUW_PASSPHRASE` | `--passphrase-file`, else a prompt |
"""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

import click

from consensus.genesis import COIN
from pouw.keys import KeyFileError, KeyPair, read_key_file
from pouw.rpc import DEFAULT_PORT, RpcClient, RpcConnectionError, RpcError

DEFAULT_NODE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_FEE = "0.0001"
"""Default fee in coins (10,000 base units: far above the relay floor of 1 unit per byte)."""


def get_pouw_home() -> Path:
    return Path.home() / ".pouw"


def get_default_datadir() -> Path:
    # `pouw node start` keeps its data in ~/.pouw/<network>, main by default.
    return Path(os.environ.get("POUW_DATADIR") or get_pouw_home() / "main")


def get_default_key_file() -> Path:
    return Path(os.environ.get("POUW_KEY_FILE") or get_pouw_home() / "wallet.key")


# --- options ---------------------------------------------------------------------


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def node_options(f: Callable) -> Callable:
    """--node and --datadir: which node to ask, and where its RPC cookie is."""
    f = node_datadir_option("--datadir", "--node-datadir")(f)
    f = click.option(
        "--node", "node_url", envvar="POUW_NODE", default=DEFAULT_NODE_URL, show_default=True,
        help="RPC address of the pouw node ($POUW_NODE).",
    )(f)
    return f


def node_datadir_option(*names: str) -> Callable:
    """The node's data directory, where its RPC cookie is."""
    return click.option(
        *names, "datadir", type=click.Path(file_okay=False, path_type=Path), envvar="POUW_DATADIR",
        default=get_default_datadir, show_default="$POUW_DATADIR or ~/.pouw/main",
        help="The node's data directory (its RPC cookie is read from there).",
    )


def key_options(f: Callable) -> Callable:
    """--key-file and --passphrase-file."""
    f = click.option(
        "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Read the key file's passphrase from this file (else $POUW_PASSPHRASE, else a prompt).",
    )(f)
    f = click.option(
        "--key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="POUW_KEY_FILE",
        default=get_default_key_file, show_default="$POUW_KEY_FILE or ~/.pouw/wallet.key",
        help="Wallet key file.",
    )(f)
    return f


def seed_option(f: Callable) -> Callable:
    """--key-seed: a devnet key given as its seed, instead of a key file."""
    return click.option(
        "--key-seed", default=None, metavar="HEX",
        help="Devnet only: use the key of this 32-byte seed instead of a key file.",
    )(f)


# --- node access -----------------------------------------------------------------


def make_client(node_url: str, datadir: Path, timeout: float = 60.0) -> RpcClient:
    try:
        return RpcClient(node_url, datadir=datadir, timeout=timeout)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def call(client: RpcClient, method: str, **params: Any) -> Any:
    """One RPC call; any failure becomes a one-line error and exit status 1."""
    try:
        return client.call(method, **params)
    except RpcConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    except RpcError as exc:
        prefix = "the node refused" if exc.code == -1 else f"{method} failed"
        raise click.ClickException(f"{prefix}: {exc.message}") from None


# --- keys -----------------------------------------------------------------------------


def read_passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> str:
    """The passphrase from a file (first line), $POUW_PASSPHRASE, or a hidden prompt."""
    if passphrase_file is not None:
        try:
            lines = passphrase_file.read_text().splitlines()
        except OSError as exc:
            raise click.ClickException(f"cannot read passphrase file {passphrase_file}: {exc.strerror}") from None
        return lines[0] if lines else ""
    env = os.environ.get("POUW_PASSPHRASE")
    if env is not None:
        return env
    return click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True)


def load_keypair(key_file: Path, passphrase_file: Path | None, key_seed: str | None = None) -> KeyPair:
    """The devnet seed's key, or the decrypted wallet key file (one-line errors for a missing file or a wrong passphrase)."""
    if key_seed:
        return parse_seed_hex(key_seed)
    if not key_file.exists():
        raise click.ClickException(f"no key file at {key_file}; create one with `pouw wallet new`")
    try:
        return read_key_file(key_file, read_passphrase(passphrase_file))
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


def parse_seed_hex(text: str) -> KeyPair:
    """A devnet key from 64 hex digits of seed."""
    try:
        seed = bytes.fromhex(text.strip())
        return KeyPair.from_seed(seed)
    except (ValueError, KeyFileError):
        raise click.BadParameter("must be 64 hex digits (a 32-byte seed)") from None


# --- amounts ------------------------------------------------------------------------


def parse_coins(text: str, what: str = "amount") -> int:
    """Coins as a decimal string ("1.5") -> base units; at most 8 decimals, not negative."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise click.BadParameter(f"{what} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise click.BadParameter(f"{what} must be a non-negative number of coins")
    units = value * COIN
    if units != units.to_integral_value():
        raise click.BadParameter(f"{what} has more than 8 decimals")
    return int(units)


def format_coins(units: int) -> str:
    """Base units -> "12.5" (trailing zeros dropped)."""
    whole, frac = divmod(int(units), COIN)
    return f"{whole}.{frac:08d}".rstrip("0").rstrip(".")


# --- output --------------------------------------------------------------------------


def echo_json(obj: Any) -> None:
    # One line, so scripts can read the last line of the output as the answer.
    click.echo(json.dumps(obj))


def output(as_json: bool, obj: Any, lines: Callable[[], list[str]] | None = None) -> None:
    """`obj` as JSON, or the human lines."""
    if as_json or lines is None:
        echo_json(obj)
        return
    for line in lines():
        click.echo(line)


def short(hexstr: str, n: int = 16) -> str:
    return hexstr[:n] + "…" if len(hexstr) > n else hexstr

