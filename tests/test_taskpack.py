import io
import json
import stat
import tarfile

import pytest
from click.testing import CliRunner

from pouw.blobcrypt import DecryptError, encrypt_file, generate_key, is_key_for
from pouw.blobstore import compute_file_digest
from pouw.seg.data import DataError, load_dataset, write_synthetic_dataset_dir
from pouw.taskpack import PackError, pack_dataset, read_keystore_entry, unpack_blob

from tests.seg_fixtures import SEED, small_spec


@pytest.fixture()
def dataset_dir(tmp_path):
    return write_synthetic_dataset_dir(tmp_path / "ds", SEED, 4, 2, small_spec(), suffix=".nii.gz")


def test_pack_and_unpack_roundtrip(tmp_path, dataset_dir):
    r = pack_dataset(dataset_dir, tmp_path / "out", tmp_path / "keys")
    for b in (r.train, r.test):
        assert b.path.exists() and compute_file_digest(b.path) == b.digest and b.size == b.path.stat().st_size
        assert is_key_for(b.key, b.key_commitment)
        assert b.key not in b.path.read_bytes()
    assert r.train.key != r.test.key and r.train.cases == 4 and r.test.cases == 2
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["train"]["digest"] == r.train.digest.hex()
    text = r.manifest_path.read_text()
    assert r.train.key.hex() not in text and r.test.key.hex() not in text
    assert stat.S_IMODE(r.keystore_path.stat().st_mode) == 0o600
    keys = read_keystore_entry(r.keystore_path)
    assert keys["train"] == (r.train.digest, r.train.key)

    train_dir = unpack_blob(r.train.path, r.train.key, tmp_path / "train")
    test_dir = unpack_blob(r.test.path, r.test.key, tmp_path / "test")
    assert not (train_dir / "imagesTs").exists() and not (test_dir / "imagesTr").exists()
    spec = small_spec()
    a = load_dataset(dataset_dir, "train", spec)
    b = load_dataset(train_dir, "train", spec)
    assert a.names == b.names and (a.images == b.images).all()
    assert len(load_dataset(test_dir, "test", spec)) == 2


def test_packing_is_deterministic_apart_from_keys(tmp_path, dataset_dir):
    r1 = pack_dataset(dataset_dir, tmp_path / "o1", tmp_path / "k")
    r2 = pack_dataset(dataset_dir, tmp_path / "o2", tmp_path / "k")
    d1 = tmp_path / "p1.tar"
    d2 = tmp_path / "p2.tar"
    from pouw.blobcrypt import decrypt_file

    decrypt_file(r1.train.path, d1, r1.train.key)
    decrypt_file(r2.train.path, d2, r2.train.key)
    assert d1.read_bytes() == d2.read_bytes()


def test_unpack_wrong_key_and_corrupt_blob(tmp_path, dataset_dir):
    r = pack_dataset(dataset_dir, tmp_path / "out", tmp_path / "keys")
    with pytest.raises(DecryptError):
        unpack_blob(r.train.path, r.test.key, tmp_path / "x")
    data = bytearray(r.train.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.blob"
    bad.write_bytes(bytes(data))
    with pytest.raises(DecryptError):
        unpack_blob(bad, r.train.key, tmp_path / "y")
    assert not (tmp_path / "y" / "imagesTr").exists()


def _blob_of_tar(tmp_path, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    raw = tmp_path / "evil.tar"
    raw.write_bytes(buf.getvalue())
    key = generate_key()
    encrypt_file(raw, tmp_path / "evil.blob", key)
    return tmp_path / "evil.blob", key


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a/../../escape.txt"])
def test_unpack_refuses_path_traversal(tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 3
    blob, key = _blob_of_tar(tmp_path, [(info, b"bad")])
    with pytest.raises(PackError, match="outside"):
        unpack_blob(blob, key, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_refuses_links(tmp_path):
    info = tarfile.TarInfo("imagesTr/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    blob, key = _blob_of_tar(tmp_path, [(info, None)])
    with pytest.raises(PackError, match="not a regular file"):
        unpack_blob(blob, key, tmp_path / "out")


def test_pack_validates_dataset(tmp_path, dataset_dir):
    (dataset_dir / "labelsTr" / "train_001.nii.gz").unlink()
    with pytest.raises(DataError, match="train_001"):
        pack_dataset(dataset_dir, tmp_path / "out", tmp_path / "keys")
    assert not (tmp_path / "out" / "train.blob").exists()


def test_cli_pack(tmp_path, dataset_dir):
    from pouw.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["task", "pack", str(dataset_dir), str(tmp_path / "o"), "--keystore",
                               str(tmp_path / "k"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(bytes.fromhex(out["train"]["digest"])) == 32 and "key" not in out["train"]
    res = runner.invoke(main, ["task", "pack", str(dataset_dir), str(tmp_path / "o2"), "--keystore", str(tmp_path / "k")])
    assert res.exit_code == 0 and "train" in res.output and "keys:" in res.output
    (dataset_dir / "dataset.json").write_text("{not json")
    res = runner.invoke(main, ["task", "pack", str(dataset_dir), str(tmp_path / "o3"), "--keystore", str(tmp_path / "k")])
    assert res.exit_code != 0 and "dataset.json" in res.output
