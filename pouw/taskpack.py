"""A task's dataset folder -> two encrypted blobs (training set, test set), and back.

Each split is a deterministic uncompressed tar (sorted names, mtime 0,
uid/gid 0, mode 0644/0755, no owner names) holding ``dataset.json`` and the
split's two folders (``imagesTr``+``labelsTr`` or ``imagesTs``+``labelsTs``);
the tar is encrypted with its own fresh key (pouw.blobcrypt). The blob
digest is SHA-256 of the encrypted file. ``OUT_DIR/task.json`` lists digests,
sizes and key commitments (never keys); the keys go to a key store file
``KEYSTORE/<train digest hex>.json`` with mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pouw.blobcrypt import DEFAULT_CHUNK_SIZE, decrypt_file, encrypt_file, key_commitment, generate_key
from pouw.blobstore import compute_file_digest
from pouw.seg.data import SPLIT_DIRS, validate_dataset_dir

MANIFEST_NAME = "task.json"
MANIFEST_VERSION = 1
MAX_MEMBERS = 1_000_000


class PackError(Exception):
    """A dataset that cannot be packed, or a blob that cannot be unpacked safely."""


@dataclass(frozen=True)
class PackedBlob:
    split: str
    path: Path
    digest: bytes
    size: int
    key: bytes
    key_commitment: bytes
    cases: int


@dataclass(frozen=True)
class PackResult:
    train: PackedBlob
    test: PackedBlob
    manifest_path: Path
    keystore_path: Path

    def to_json(self, include_keys: bool = False) -> dict:
        def one(b: PackedBlob) -> dict:
            d = {"path": str(b.path), "digest": b.digest.hex(), "size": b.size,
                 "key_commitment": b.key_commitment.hex(), "cases": b.cases}
            if include_keys:
                d["key"] = b.key.hex()
            return d

        return {"train": one(self.train), "test": one(self.test), "manifest": str(self.manifest_path),
                "keystore": str(self.keystore_path)}


def get_default_keystore() -> Path:
    """$POUW_KEYSTORE, else ~/.pouw/keys."""
    env = os.environ.get("POUW_KEYSTORE")
    return Path(env) if env else Path.home() / ".pouw" / "keys"


def _split_members(root: Path, split: str) -> list[Path]:
    img_dir, lab_dir, _ = SPLIT_DIRS[split]
    files = [root / "dataset.json"]
    for sub in (img_dir, lab_dir):
        d = root / sub
        if not d.is_dir():
            raise PackError(f"{d}: folder is missing")
        for p in sorted(d.rglob("*")):
            if p.is_symlink():
                raise PackError(f"{p}: symbolic links are not packed")
            if p.is_file():
                files.append(p)
    return files


def write_split_tar(root: Path, split: str, dst) -> int:
    """Write the deterministic tar of one split to a binary file; returns file count."""
    files = _split_members(root, split)
    with tarfile.open(fileobj=dst, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            info = tarfile.TarInfo(p.relative_to(root).as_posix())
            info.size = p.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
    return len(files)


def pack_split(root: Path, split: str, out_path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PackedBlob:
    key = generate_key()
    img_dir = SPLIT_DIRS[split][0]
    cases = sum(1 for p in (root / img_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".pack-") as tmp:
        tar_path = Path(tmp) / "split.tar"
        with open(tar_path, "wb") as f:
            write_split_tar(root, split, f)
        encrypt_file(tar_path, out_path, key, chunk_size)
    return PackedBlob(split, out_path, compute_file_digest(out_path), out_path.stat().st_size, key,
                      key_commitment(key), cases)


def write_private_json(path: Path, obj: dict) -> None:
    """Write a JSON file readable by the owner only (mode 0600 from creation)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pack_dataset(
    dataset_dir: Path | str,
    out_dir: Path | str,
    keystore_dir: Path | str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    validate: bool = True,
) -> PackResult:
    """Validate a dataset folder and write train.blob, test.blob and task.json to `out_dir`."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise PackError(f"{root}: dataset folder not found")
    if validate:
        validate_dataset_dir(root)  # DataError names the offending file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = pack_split(root, "train", out / "train.blob", chunk_size)
    test = pack_split(root, "test", out / "test.blob", chunk_size)
    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": json.loads((root / "dataset.json").read_text()).get("name", root.name),
        "chunk_size": chunk_size,
        "train": {"file": "train.blob", "digest": train.digest.hex(), "size": train.size,
                  "key_commitment": train.key_commitment.hex(), "cases": train.cases},
        "test": {"file": "test.blob", "digest": test.digest.hex(), "size": test.size,
                 "key_commitment": test.key_commitment.hex(), "cases": test.cases},
    }
    manifest_path = out / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    ks = Path(keystore_dir) if keystore_dir is not None else get_default_keystore()
    keystore_path = ks / f"{train.digest.hex()}.json"
    write_private_json(keystore_path, {
        "train": {"digest": train.digest.hex(), "key": train.key.hex()},
        "test": {"digest": test.digest.hex(), "key": test.key.hex()},
    })
    return PackResult(train, test, manifest_path, keystore_path)


def read_keystore_entry(path: Path | str) -> dict[str, tuple[bytes, bytes]]:
    """{split: (digest, key)} from a key store file written by pack_dataset."""
    obj = json.loads(Path(path).read_text())
    return {s: (bytes.fromhex(obj[s]["digest"]), bytes.fromhex(obj[s]["key"])) for s in ("train", "test")}


def _check_member(m: tarfile.TarInfo, out: Path) -> Path:
    name = m.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not name or name.startswith("/"):
        raise PackError(f"blob member {name!r} would be written outside the dataset folder")
    if not (m.isfile() or m.isdir()):
        raise PackError(f"blob member {name!r} is not a regular file or folder")
    target = (out / pure).resolve()
    if not target.is_relative_to(out.resolve()):
        raise PackError(f"blob member {name!r} would be written outside the dataset folder")
    return target


def unpack_blob(blob_path: Path | str, key: bytes, out_dir: Path | str) -> Path:
    """Decrypt a split blob (every chunk checked) and extract it safely into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".unpack-") as tmp:
        tar_path = Path(tmp) / "split.tar"
        decrypt_file(blob_path, tar_path, key)  # raises DecryptError; nothing partial is extracted
        try:
            with tarfile.open(tar_path, mode="r:") as tar:
                members = tar.getmembers()
                if len(members) > MAX_MEMBERS:
                    raise PackError("blob holds too many files")
                targets = [(m, _check_member(m, out)) for m in members]
                for m, target in targets:
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as f:
                        while chunk := src.read(1 << 20):
                            f.write(chunk)
        except tarfile.TarError as exc:
            raise PackError(f"{blob_path}: decrypted blob is not a valid tar ({exc})") from exc
    return out


__all__ = ["pack_dataset", "unpack_blob", "PackResult", "PackedBlob", "PackError", "get_default_keystore",
           "read_keystore_entry", "MANIFEST_NAME", "write_split_tar"]

