"""`pouw wallet ...`: key files, balances and transfers."""

from __future__ import annotations

from pathlib import Path

import click

from pouw.cli.common import (
    DEFAULT_FEE,
    call,
    format_coins,
    json_option,
    key_options,
    load_keypair,
    make_client,
    node_options,
    output,
    parse_coins,
    read_passphrase,
    seed_option,
)
from pouw.encoding import encode
from pouw.keys import KeyFileError, KeyPair, parse_address, read_key_file_address, write_key_file
from pouw.types import Bond, Transfer, Unbond


@click.group()
def wallet() -> None:
    """Wallet: create a key, show its address and balance, send coins."""


@wallet.command("new")
@key_options
@click.option("--fast-kdf", is_flag=True,
              help="Use Argon2id's interactive limits (quicker to open; for devnets and tests).")
@json_option
def new(key_file: Path, passphrase_file: Path | None, fast_kdf: bool, as_json: bool) -> None:
    """Create a new key and store it encrypted in the key file (mode 0600)."""
    if key_file.exists():
        raise click.ClickException(f"key file {key_file} already exists; refusing to overwrite it")
    passphrase = read_passphrase(passphrase_file, confirm=True)
    keypair = KeyPair.generate()
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_key_file(key_file, keypair, passphrase, fast=fast_kdf)
    except (KeyFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    output(as_json, {"address": keypair.address, "key_file": str(key_file)},
           lambda: [f"address {keypair.address}", f"key file {key_file} (keep it and its passphrase safe)"])


@wallet.command("address")
@key_options
@json_option
def address(key_file: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Print the key file's address (no passphrase needed)."""
    try:
        addr = read_key_file_address(key_file)
    except KeyFileError as exc:
        raise click.ClickException(f"{exc}; create one with `pouw wallet new`") from None
    output(as_json, {"address": addr}, lambda: [addr])


@wallet.command("balance")
@click.argument("address", required=False)
@node_options
@key_options
@json_option
def balance(address: str | None, node_url: str, datadir: Path, key_file: Path, passphrase_file: Path | None,
            as_json: bool) -> None:
    """Balance and nonce of ADDRESS (default: the key file's address)."""
    if address is None:
        try:
            address = read_key_file_address(key_file)
        except KeyFileError as exc:
            raise click.ClickException(f"{exc}; pass an ADDRESS or create a key with `pouw wallet new`") from None
    try:
        addr = parse_address(address).hex()
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None
    res = call(make_client(node_url, datadir), "getbalance", address=addr)
    output(as_json, res, lambda: [
        f"{format_coins(res['balance'])} coins  ({res['address']})",
        f"nonce {res['nonce']}, next {res['pending_nonce']}",
    ] + ([f"bonded {format_coins(res.get('bonded', 0))}, unbonding {format_coins(res.get('unbonding', 0))}"
          + (f" (free from height {res['unbond_height']})" if res.get("unbonding") else "")]
         if res.get("bonded") or res.get("unbonding") else []))


@wallet.command("send")
@click.argument("to")
@click.argument("amount")
@click.option("--fee", default=DEFAULT_FEE, show_default=True, help="Fee in coins, paid to the block's miner.")
@node_options
@key_options
@seed_option
@json_option
def send(to: str, amount: str, fee: str, node_url: str, datadir: Path, key_file: Path,
         passphrase_file: Path | None, key_seed: str | None, as_json: bool) -> None:
    """Send AMOUNT coins (e.g. 1.5) to the address TO."""
    try:
        recipient = parse_address(to)
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="TO") from None
    units = parse_coins(amount)
    fee_units = parse_coins(fee, "fee")
    if units < 1:
        raise click.BadParameter("must be more than 0", param_hint="AMOUNT")
    client = make_client(node_url, datadir)
    keypair = load_keypair(key_file, passphrase_file, key_seed)
    acct = call(client, "getbalance", address=keypair.address)
    tx = Transfer(keypair.public_key, recipient, units, fee_units, int(acct["pending_nonce"])).signed_by(keypair)
    res = call(client, "sendtx", hex=encode(tx).hex())
    output(as_json, {"txid": res["txid"], "amount": units, "fee": fee_units, "nonce": tx.nonce,
                     "from": keypair.address, "to": recipient.hex()},
           lambda: [f"sent {format_coins(units)} coins to {recipient.hex()[:16]}… (fee {format_coins(fee_units)}, "
                    f"nonce {tx.nonce})", f"txid {res['txid']}"])


def _send_bond_tx(kind: str, amount: str, fee: str, node_url: str, datadir: Path, key_file: Path,
                  passphrase_file: Path | None, key_seed: str | None, as_json: bool) -> None:
    units = parse_coins(amount, "amount")
    fee_units = parse_coins(fee, "fee")
    client = make_client(node_url, datadir)
    keypair = load_keypair(key_file, passphrase_file, key_seed)
    acct = call(client, "getbalance", address=keypair.address)
    cls = Bond if kind == "bond" else Unbond
    tx = cls(keypair.public_key, units, fee_units, int(acct["pending_nonce"])).signed_by(keypair)
    res = call(client, "sendtx", hex=encode(tx).hex())
    verb = "bonding" if kind == "bond" else "unbonding"
    output(as_json, {"txid": res["txid"], "amount": units, "fee": fee_units, "nonce": tx.nonce, "miner": keypair.address},
           lambda: [f"{verb} {format_coins(units)} coins (fee {format_coins(fee_units)}, nonce {tx.nonce})", f"txid {res['txid']}"])


@wallet.command("bond")
@click.argument("amount")
@click.option("--fee", default=DEFAULT_FEE, show_default=True, help="Fee in coins, paid to the block's miner.")
@node_options
@key_options
@seed_option
@json_option
def bond(amount: str, fee: str, node_url: str, datadir: Path, key_file: Path, passphrase_file: Path | None,
         key_seed: str | None, as_json: bool) -> None:
    """Lock AMOUNT coins as this key's claim bond (a miner's claims need one; a false claim forfeits it)."""
    _send_bond_tx("bond", amount, fee, node_url, datadir, key_file, passphrase_file, key_seed, as_json)


@wallet.command("unbond")
@click.argument("amount")
@click.option("--fee", default=DEFAULT_FEE, show_default=True, help="Fee in coins, paid to the block's miner.")
@node_options
@key_options
@seed_option
@json_option
def unbond(amount: str, fee: str, node_url: str, datadir: Path, key_file: Path, passphrase_file: Path | None,
           key_seed: str | None, as_json: bool) -> None:
    """Start releasing AMOUNT bonded coins (they return after the unbonding delay; 0: release what is due)."""
    _send_bond_tx("unbond", amount, fee, node_url, datadir, key_file, passphrase_file, key_seed, as_json)
