"""Ed25519 keys, domain-separated signatures and encrypted key files."""

from __future__ import annotations

import os
import stat

import pytest

from pouw.keys import KeyFileError, KeyPair, is_valid_signature, parse_address, read_key_file, read_key_file_address, write_key_file


def test_sign_and_verify_with_domain_separation():
    kp = KeyPair.generate()
    sig = kp.sign(b"transfer", b"payload")
    assert is_valid_signature(kp.public_key, b"transfer", b"payload", sig)
    assert not is_valid_signature(kp.public_key, b"commit", b"payload", sig)
    assert not is_valid_signature(kp.public_key, b"transfer", b"payloaD", sig)
    assert not is_valid_signature(KeyPair.generate().public_key, b"transfer", b"payload", sig)
    assert not is_valid_signature(kp.public_key, b"transfer", b"payload", sig[:-1])


def test_address_round_trip_and_errors():
    kp = KeyPair.generate()
    assert parse_address(kp.address) == kp.public_key
    assert parse_address("0x" + kp.address.upper()) == kp.public_key
    with pytest.raises(KeyFileError, match="64 hex digits"):
        parse_address("abc")
    with pytest.raises(KeyFileError, match="not hexadecimal"):
        parse_address("zz" * 32)


def test_repr_hides_the_seed():
    kp = KeyPair.generate()
    assert kp.seed.hex() not in repr(kp)


def test_key_file_round_trip_and_permissions(tmp_path):
    kp = KeyPair.generate()
    path = tmp_path / "wallet.key"
    write_key_file(path, kp, "correct horse", fast=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file_address(path) == kp.address
    assert read_key_file(path, "correct horse").public_key == kp.public_key
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        read_key_file(path, "wrong")
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(path, kp, "x", fast=True)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        read_key_file(path, "correct horse")


def test_damaged_key_files_are_refused(tmp_path):
    path = tmp_path / "k"
    with pytest.raises(KeyFileError, match="no key file"):
        read_key_file(path, "x")
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="unreadable"):
        read_key_file(path, "x")
    path.write_text('{"version": 1, "kdf": "argon2id", "address": "00"}')
    with pytest.raises(KeyFileError, match="missing"):
        read_key_file(path, "x")
