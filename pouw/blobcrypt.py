"""Chunked authenticated encryption of blobs (libsodium secretstream).

File format (all integers big-endian)::

    magic       8 bytes   b"POUWENC1"
    chunk_size  4 bytes   plaintext bytes per chunk (last chunk may be shorter)
    header     24 bytes   secretstream header
    chunks      ...       each chunk is chunk_size + 17 bytes of ciphertext,
                          the last one shorter or equal and tagged FINAL

Each chunk is authenticated with the first 12 bytes (magic + chunk size) as
additional data, so a changed chunk size is detected. Secretstream chains the
chunks: a truncated stream (no FINAL tag), reordered or altered chunks, bytes
after the FINAL chunk and a wrong key all fail. Decrypted output is written
to a temporary file and renamed into place only after the FINAL chunk
authenticated, so nothing partial is ever visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

MAGIC = b"POUWENC1"
DEFAULT_CHUNK_SIZE = 1 << 20
"""Plaintext bytes per secretstream message (1 MiB)."""
MAX_CHUNK_SIZE = 64 << 20
KEY_SIZE = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
HEADER_SIZE = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
PREFIX_SIZE = len(MAGIC) + 4
KEY_COMMITMENT_TAG = b"pouw/key-commitment/v1\x00"
"""Domain tag: key_commitment(key) = SHA-256(KEY_COMMITMENT_TAG || key)."""

_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL


class DecryptError(Exception):
    """Encrypted blob that does not authenticate, is cut short, or a wrong key."""


def generate_key() -> bytes:
    """A fresh random 32-byte secretstream key."""
    return sodium.crypto_secretstream_xchacha20poly1305_keygen()


def key_commitment(key: bytes) -> bytes:
    """Public hash commitment to a key, published in the task before the key."""
    _check_key(key)
    return hashlib.sha256(KEY_COMMITMENT_TAG + bytes(key)).digest()


def is_key_for(key: bytes, commitment: bytes) -> bool:
    """True if `key` opens `commitment` (a revealed key is checked with this)."""
    try:
        return key_commitment(key) == bytes(commitment)
    except ValueError:
        return False


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ValueError(f"encryption key must be {KEY_SIZE} bytes")


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Encrypt everything readable from `src` into `dst`; returns bytes written."""
    _check_key(key)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_SIZE}")
    prefix = MAGIC + struct.pack(">I", chunk_size)
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, bytes(key))
    dst.write(prefix + header)
    written = PREFIX_SIZE + HEADER_SIZE
    chunk = _read_full(src, chunk_size)
    while True:
        nxt = _read_full(src, chunk_size) if len(chunk) == chunk_size else b""
        final = not nxt
        c = sodium.crypto_secretstream_xchacha20poly1305_push(
            state, chunk, prefix, _TAG_FINAL if final else _TAG_MESSAGE
        )
        dst.write(c)
        written += len(c)
        if final:
            return written
        chunk = nxt


def decrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes) -> int:
    """Decrypt `src` into `dst`, checking every chunk; returns plaintext bytes.

    Raises DecryptError; on error `dst` holds a prefix of unauthenticated
    length, so callers that expose output must use `decrypt_file`.
    """
    _check_key(key)
    prefix = _read_full(src, PREFIX_SIZE)
    if len(prefix) < PREFIX_SIZE or prefix[: len(MAGIC)] != MAGIC:
        raise DecryptError("not a pouw encrypted blob (bad magic)")
    (chunk_size,) = struct.unpack(">I", prefix[len(MAGIC):])
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptError(f"encrypted blob declares an invalid chunk size {chunk_size}")
    header = _read_full(src, HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        raise DecryptError("encrypted blob is truncated in its header")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    try:
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, bytes(key))
    except CryptoError as exc:
        raise DecryptError(f"cannot start decryption: {exc}") from exc
    total = 0
    index = 0
    while True:
        c = _read_full(src, chunk_size + ABYTES)
        if not c:
            raise DecryptError(f"encrypted blob is truncated: no final chunk after {index} chunks")
        try:
            m, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, c, prefix)
        except CryptoError as exc:
            raise DecryptError(
                f"chunk {index} does not authenticate (wrong key, or blob altered, reordered or truncated)"
            ) from exc
        dst.write(m)
        total += len(m)
        index += 1
        if tag == _TAG_FINAL:
            if src.read(1):
                raise DecryptError("encrypted blob has bytes after its final chunk")
            return total
        if len(c) < chunk_size + ABYTES:
            raise DecryptError(f"encrypted blob is truncated at chunk {index - 1}")


def encrypt_file(src: Path | str, dst: Path | str, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Encrypt file `src` to `dst` (atomically); returns the encrypted size."""
    with open(src, "rb") as fin:
        return _atomic_write(dst, lambda out: encrypt_stream(fin, out, key, chunk_size))


def decrypt_file(src: Path | str, dst: Path | str, key: bytes) -> int:
    """Decrypt `src` to `dst`; `dst` appears only if the whole stream authenticated."""
    with open(src, "rb") as fin:
        return _atomic_write(dst, lambda out: decrypt_stream(fin, out, key))


def _atomic_write(dst: Path | str, fill) -> int:
    dst = Path(dst)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            n = fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return n


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes unless EOF comes first (pipes may return short reads)."""
    buf = f.read(n)
    if buf is None:
        buf = b""
    while len(buf) < n:
        more = f.read(n - len(buf))
        if not more:
            break
        buf += more
    return buf


__all__ = [
    "DecryptError",
    "generate_key",
    "key_commitment",
    "is_key_for",
    "encrypt_stream",
    "decrypt_stream",
    "encrypt_file",
    "decrypt_file",
    "DEFAULT_CHUNK_SIZE",
    "KEY_COMMITMENT_TAG",
    "MAGIC",
]
