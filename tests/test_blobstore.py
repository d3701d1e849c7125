import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from pouw.blobstore import BlobError, BlobStore


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def test_put_get_has_verify(tmp_path):
    s = BlobStore(tmp_path)
    d = s.put_bytes(b"hello")
    assert d == sha(b"hello") and s.has(d) and s.size(d) == 5 and s.verify(d)
    with s.open(d) as f:
        assert f.read() == b"hello"
    assert s.path(d).name == d.hex() and s.path(d).parent.name == d.hex()[:2]
    assert s.put_bytes(b"hello") == d  # idempotent
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3 << 20))
    d2 = s.put_file(src)
    assert d2 == sha(src.read_bytes()) and s.verify(d2)
    assert sorted(s.iter_digests()) == sorted([d, d2])
    s.path(d2).write_bytes(b"corrupted")
    assert not s.verify(d2)
    missing = sha(b"nope")
    assert not s.has(missing) and not s.verify(missing)
    with pytest.raises(BlobError, match="not in the store"):
        s.open(missing)
    with pytest.raises(BlobError, match="32 bytes"):
        s.has(b"short")


def test_writer_commit_and_discard(tmp_path):
    s = BlobStore(tmp_path)
    with s.writer() as w:
        w.write(b"ab")
        w.write(b"cd")
        d = w.commit(expected_digest=sha(b"abcd"))
    assert s.get_bytes(d) == b"abcd"
    with pytest.raises(BlobError, match="mismatch"):
        with s.writer() as w:
            w.write(b"xyz")
            w.commit(expected_digest=sha(b"other"))
    assert not s.has(sha(b"xyz"))
    with pytest.raises(RuntimeError):
        with s.writer() as w:
            w.write(b"qqq")
            raise RuntimeError("boom")
    assert not s.has(sha(b"qqq"))
    assert list(s.tmp_dir.iterdir()) == []


def test_fetch_file_link(tmp_path):
    s = BlobStore(tmp_path / "s")
    src = tmp_path / "blob"
    data = os.urandom(100_000)
    src.write_bytes(data)
    seen = []
    p = s.fetch(src.as_uri(), sha(data), size=len(data), allow_file=True,
                progress=lambda done, total: seen.append((done, total)))
    assert p.read_bytes() == data and seen[-1] == (len(data), len(data))
    with pytest.raises(BlobError, match="mismatch"):
        BlobStore(tmp_path / "t").fetch(src.as_uri(), sha(b"other"), allow_file=True)
    # A link from the network may not read local files.
    with pytest.raises(BlobError, match="file:// links are only for local imports"):
        BlobStore(tmp_path / "u").fetch(src.as_uri(), sha(data))
    with pytest.raises(BlobError, match="unsupported"):
        s.fetch("ftp://x/y", sha(b"q"))


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    blobs: dict = {}
    log: list = []
    cut_first: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        data = self.blobs.get(name)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        self.log.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.cut_first.pop(name, None)
        if cut is not None:
            self.wfile.write(body[:cut])  # then drop the connection
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    _RangeHandler.blobs = {}
    _RangeHandler.log = []
    _RangeHandler.cut_first = {}
    yield server, _RangeHandler
    server.shutdown()
    server.server_close()


def test_interrupted_http_fetch_keeps_nothing(tmp_path, http_server):
    server, handler = http_server
    data = os.urandom(3 * (1 << 20) + 123)
    d = sha(data)
    handler.blobs[d.hex()] = data
    handler.cut_first[d.hex()] = 1_500_000
    url = f"http://127.0.0.1:{server.server_port}/blob/{d.hex()}"
    s = BlobStore(tmp_path)
    with pytest.raises(BlobError, match="ended after 1500000 of the declared 3145851 bytes"):
        s.fetch(url, d, size=len(data))
    assert not s.has(d) and list(s.tmp_dir.iterdir()) == []
    p = s.fetch(url, d, size=len(data))
    assert p.read_bytes() == data and s.verify(d)
    assert handler.log == [None, None]  # no Range: a failed fetch left nothing to resume from


def test_fetch_http_bad_digest_and_404(tmp_path, http_server):
    server, handler = http_server
    handler.blobs["x"] = b"payload"
    s = BlobStore(tmp_path)
    with pytest.raises(BlobError, match="mismatch"):
        s.fetch(f"http://127.0.0.1:{server.server_port}/blob/x", sha(b"different"))
    assert not any(s.tmp_dir.iterdir())
    with pytest.raises(BlobError, match="404"):
        s.fetch(f"http://127.0.0.1:{server.server_port}/blob/missing", sha(b"z"))
    with pytest.raises(BlobError, match="limit"):
        s.fetch(f"http://127.0.0.1:{server.server_port}/blob/x", sha(b"payload"), max_size=3)


def test_fetch_does_not_refetch(tmp_path):
    s = BlobStore(tmp_path)
    d = s.put_bytes(b"have it")
    assert s.fetch("http://127.0.0.1:9/never", d) == s.path(d)
    _ = Path
