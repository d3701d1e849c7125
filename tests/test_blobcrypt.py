import io
import os

import pytest
from hypothesis import given, settings, strategies as st

from pouw.blobcrypt import (
    ABYTES, DecryptError, HEADER_SIZE, PREFIX_SIZE, decrypt_file, decrypt_stream, encrypt_file, encrypt_stream,
    generate_key, is_key_for, key_commitment,
)


def roundtrip(data: bytes, chunk: int, key: bytes | None = None) -> bytes:
    key = key or generate_key()
    enc = io.BytesIO()
    encrypt_stream(io.BytesIO(data), enc, key, chunk)
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(enc.getvalue()), out, key)
    return out.getvalue()


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 130))
def test_roundtrip_any_length_and_chunk(data, chunk):
    assert roundtrip(data, chunk) == data


def test_ciphertext_layout_and_size():
    key = generate_key()
    enc = io.BytesIO()
    n = encrypt_stream(io.BytesIO(b"x" * 250), enc, key, 100)
    # 3 chunks: 100, 100, 50 (the last one FINAL)
    assert n == len(enc.getvalue()) == PREFIX_SIZE + HEADER_SIZE + 250 + 3 * ABYTES
    assert enc.getvalue()[:8] == b"POUWENC1"
    assert b"x" * 20 not in enc.getvalue()


def test_key_commitment():
    k = generate_key()
    c = key_commitment(k)
    assert len(c) == 32 and is_key_for(k, c)
    assert not is_key_for(generate_key(), c)
    assert not is_key_for(b"short", c)
    with pytest.raises(ValueError):
        key_commitment(b"short")


def _encrypted(data=b"abcdefgh" * 100, chunk=64):
    key = generate_key()
    enc = io.BytesIO()
    encrypt_stream(io.BytesIO(data), enc, key, chunk)
    return key, bytearray(enc.getvalue()), chunk


def _decrypt(blob, key):
    decrypt_stream(io.BytesIO(bytes(blob)), io.BytesIO(), key)


def test_wrong_key_fails():
    key, blob, _ = _encrypted()
    with pytest.raises(DecryptError):
        _decrypt(blob, generate_key())


@pytest.mark.parametrize("cut", [1, ABYTES + 64, 10])
def test_truncation_fails(cut):
    key, blob, _ = _encrypted()
    with pytest.raises(DecryptError):
        _decrypt(blob[:-cut], key)


def test_truncation_at_chunk_boundary_fails():
    key, blob, chunk = _encrypted()
    start = PREFIX_SIZE + HEADER_SIZE
    whole = chunk + ABYTES
    with pytest.raises(DecryptError, match="truncated|final"):
        _decrypt(blob[: start + 3 * whole], key)


def test_reordered_chunks_fail():
    key, blob, chunk = _encrypted()
    start = PREFIX_SIZE + HEADER_SIZE
    whole = chunk + ABYTES
    a = blob[start: start + whole]
    b = blob[start + whole: start + 2 * whole]
    swapped = blob[:start] + b + a + blob[start + 2 * whole:]
    with pytest.raises(DecryptError):
        _decrypt(swapped, key)


def test_altered_byte_fails_and_trailing_bytes_fail():
    key, blob, _ = _encrypted()
    altered = bytearray(blob)
    altered[PREFIX_SIZE + HEADER_SIZE + 100] ^= 1
    with pytest.raises(DecryptError):
        _decrypt(altered, key)
    with pytest.raises(DecryptError, match="authenticate"):
        _decrypt(blob + b"\0", key)  # the extra byte lands in the short final chunk
    key2, exact, _ = _encrypted(b"z" * 128, 64)  # final chunk is full size
    with pytest.raises(DecryptError, match="after its final"):
        _decrypt(exact + b"\0", key2)
    changed_chunk = bytearray(blob)
    changed_chunk[11] ^= 1  # chunk size field
    with pytest.raises(DecryptError):
        _decrypt(changed_chunk, key)
    with pytest.raises(DecryptError, match="magic"):
        _decrypt(b"NOTMAGIC" + blob[8:], key)


def test_decrypt_file_leaves_nothing_on_failure(tmp_path):
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(5000))
    key = generate_key()
    encrypt_file(src, tmp_path / "enc", key, chunk_size=1000)
    decrypt_file(tmp_path / "enc", tmp_path / "dec", key)
    assert (tmp_path / "dec").read_bytes() == src.read_bytes()
    data = (tmp_path / "enc").read_bytes()
    (tmp_path / "bad").write_bytes(data[:-5])
    with pytest.raises(DecryptError):
        decrypt_file(tmp_path / "bad", tmp_path / "out", key)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "dec", "enc", "plain"]
