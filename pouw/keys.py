"""Ed25519 keys, signatures with domain separation, and passphrase-encrypted key files.

An address is the 32-byte Ed25519 public key; it is shown as 64 hex digits.
Every signature covers `DOMAIN || kind || payload`, so a signature made for
one kind of message (a transfer, a commit, a block header) can never be
replayed as another.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

DOMAIN = b"pouw/v1/"

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32

KEYFILE_VERSION = 1


class KeyFileError(ValueError):
    """A key, address, signature or key file that cannot be used."""




def format_address(public_key: bytes) -> str:
    """The printed form of an address: 64 lowercase hex digits."""
    return bytes(public_key).hex()


def parse_address(text: str) -> bytes:
    """Parse a printed address; raises KeyFileError with the reason."""
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) != 2 * PUBLIC_KEY_SIZE:
        raise KeyFileError(f"address must be {2 * PUBLIC_KEY_SIZE} hex digits, got {len(text)}")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError("address is not hexadecimal") from exc
    try:
        nacl.signing.VerifyKey(raw)
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError) as exc:
        raise KeyFileError("address is not an Ed25519 public key") from exc
    return raw


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 signing key and its public key (the address)."""

    seed: bytes
    """32-byte secret seed the signing key is derived from."""

    @staticmethod
    def generate() -> "KeyPair":
        """A fresh random key pair."""
        return KeyPair(nacl.utils.random(SEED_SIZE))

    @staticmethod
    def from_seed(seed: bytes) -> "KeyPair":
        """The key pair of a 32-byte seed (deterministic; for tests and devnets)."""
        if len(seed) != SEED_SIZE:
            raise KeyFileError(f"seed must be {SEED_SIZE} bytes")
        return KeyPair(bytes(seed))

    @property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key, which is also the account address."""
        return bytes(self._signing_key.verify_key)

    @property
    def address(self) -> str:
        """The printed address."""
        return format_address(self.public_key)

    def sign(self, kind: bytes, payload: bytes) -> bytes:
        """A 64-byte signature over `payload` for messages of `kind`."""
        return self._signing_key.sign(DOMAIN + kind + b"\x00" + payload).signature

    def __repr__(self) -> str:  # never print the seed
        return f"KeyPair(address={self.address})"


def is_valid_signature(public_key: bytes, kind: bytes, payload: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s signature of `payload` for `kind`."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(bytes(public_key)).verify(DOMAIN + kind + b"\x00" + payload, bytes(signature))
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False


# --- key files -------------------------------------------------------------
# Argon2id (pynacl pwhash) derives a secretbox key from the passphrase; the
# file holds the salt, the limits used, and the sealed seed, as JSON.


def write_key_file(path: Path, keypair: KeyPair, passphrase: str, *, fast: bool = False) -> None:
    """Encrypt `keypair` with `passphrase` into `path`, readable only by its owner.

    `fast` uses the interactive Argon2id limits (for tests and devnets); the
    default uses the moderate limits.
    """
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite it")
    ops = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE if fast else nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    mem = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE if fast else nacl.pwhash.argon2id.MEMLIMIT_MODERATE
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    key = nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt, opslimit=ops, memlimit=mem)
    sealed = nacl.secret.SecretBox(key).encrypt(keypair.seed)
    doc = {
        "version": KEYFILE_VERSION,
        "address": keypair.address,
        "kdf": "argon2id",
        "opslimit": ops,
        "memlimit": mem,
        "salt": salt.hex(),
        "sealed_seed": bytes(sealed).hex(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_key_file_address(path: Path) -> str:
    """The address recorded in a key file, without decrypting it."""
    return _load_key_doc(Path(path))["address"]


def read_key_file(path: Path, passphrase: str) -> KeyPair:
    """Decrypt a key file; refuses files that others can read, and wrong passphrases."""
    path = Path(path)
    doc = _load_key_doc(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    try:
        salt = bytes.fromhex(doc["salt"])
        sealed = bytes.fromhex(doc["sealed_seed"])
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt, opslimit=int(doc["opslimit"]), memlimit=int(doc["memlimit"])
        )
        seed = nacl.secret.SecretBox(key).decrypt(sealed)
    except nacl.exceptions.CryptoError as exc:
        raise KeyFileError(f"wrong passphrase for key file {path}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is damaged: {exc}") from exc
    keypair = KeyPair.from_seed(seed)
    if keypair.address != doc["address"]:
        raise KeyFileError(f"key file {path} is damaged: address does not match the key")
    return keypair


def _load_key_doc(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise KeyFileError(f"no key file at {path}") from exc
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {path} is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != KEYFILE_VERSION or doc.get("kdf") != "argon2id":
        raise KeyFileError(f"key file {path} has an unknown format")
    for field in ("address", "salt", "sealed_seed", "opslimit", "memlimit"):
        if field not in doc:
            raise KeyFileError(f"key file {path} is damaged: missing {field}")
    return doc
