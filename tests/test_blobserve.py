"""Blob HTTP server (real sockets) against the real BlobStore, and the
/pouw/blob/1 libp2p chunk protocol between two real hosts."""

import hashlib
import http.client
import os

import pytest
import trio

from pouw.blobserve import BlobServer, parse_range
from pouw.blobstore import BlobError, BlobStore, FetchLimitError

SIZE = 3 * (1 << 20) + 12345  # several 1 MiB chunks plus a tail


@pytest.fixture
def blob(tmp_path):
    store = BlobStore(tmp_path / "src")
    data = os.urandom(SIZE)
    digest = store.put_bytes(data)
    return store, data, digest


@pytest.fixture
def server(blob):
    srv = BlobServer(blob[0], host="127.0.0.1", port=0).start()
    try:
        yield srv
    finally:
        srv.stop()


def _get(srv, path, method="GET", headers=None):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_full_get(server, blob):
    _, data, digest = blob
    status, headers, body = _get(server, f"/blob/{digest.hex()}")
    assert status == 200
    assert int(headers["Content-Length"]) == SIZE
    assert headers["Accept-Ranges"] == "bytes"
    assert body == data


def test_ranged_get(server, blob):
    _, data, digest = blob
    status, headers, body = _get(server, f"/blob/{digest.hex()}", headers={"Range": "bytes=100-199"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 100-199/{SIZE}"
    assert body == data[100:200]
    status, headers, body = _get(server, f"/blob/{digest.hex()}", headers={"Range": f"bytes={SIZE - 10}-"})
    assert status == 206 and body == data[-10:]
    status, headers, body = _get(server, f"/blob/{digest.hex()}", headers={"Range": "bytes=-5"})
    assert status == 206 and body == data[-5:]
    # End past the size is clipped; start past the size is 416.
    status, headers, body = _get(server, f"/blob/{digest.hex()}", headers={"Range": f"bytes=10-{SIZE + 99}"})
    assert status == 206 and body == data[10:]
    status, headers, _ = _get(server, f"/blob/{digest.hex()}", headers={"Range": f"bytes={SIZE}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{SIZE}"


def test_head(server, blob):
    _, _, digest = blob
    status, headers, body = _get(server, f"/blob/{digest.hex()}", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == SIZE
    assert headers["ETag"] == f'"{digest.hex()}"'
    status, _, _ = _get(server, "/blob/" + "ab" * 32, method="HEAD")
    assert status == 404


def test_missing_and_bad_paths_are_404(server):
    assert _get(server, "/blob/" + "00" * 32)[0] == 404
    assert _get(server, "/blob/xyz")[0] == 404
    assert _get(server, "/etc/passwd")[0] == 404
    assert _get(server, "/blob/../../" + "00" * 32)[0] == 404


def test_fetch_into_another_store(server, blob, tmp_path):
    _, data, digest = blob
    dst = BlobStore(tmp_path / "dst")
    seen = []
    path = dst.fetch(server.link(digest), digest, progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == data
    assert seen[-1] == SIZE


def test_fetch_checks_the_declared_size(server, blob, tmp_path):
    _, data, digest = blob
    dst = BlobStore(tmp_path / "dst")
    got = []
    with pytest.raises(FetchLimitError, match=f"announced {SIZE} bytes, not the declared size of {SIZE - 1} bytes"):
        dst.fetch(server.link(digest), digest, size=SIZE - 1)
    path = dst.fetch(server.link(digest), digest, size=SIZE, progress=lambda done, total: got.append((done, total)))
    assert hashlib.sha256(path.read_bytes()).digest() == digest
    assert got[-1] == (SIZE, SIZE)


def test_fetch_wrong_digest_is_refused(server, blob, tmp_path):
    _, data, digest = blob
    dst = BlobStore(tmp_path / "dst")
    wrong = bytes(32)
    link = server.link(digest)  # serves bytes that do not hash to `wrong`
    with pytest.raises(BlobError, match="mismatch"):
        dst.fetch(link, wrong)
    assert not dst.has(wrong)


def test_parse_range_edge_cases():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=0-1,5-6", 10) is None  # several ranges: whole blob
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=0-", 0) == "unsatisfiable"


# ---------------------------------------------------------------- /pouw/blob/1


def test_blob_chunks_over_libp2p(blob, tmp_path):
    from pouw.p2p import P2PNode
    from pouw.p2p.blob import fetch_blob_from_peer, serve_blobs

    src, data, digest = blob
    dst = BlobStore(tmp_path / "dst")

    async def main():
        server = P2PNode(os.urandom(32))
        client = P2PNode(os.urandom(32))
        serve_blobs(server, src)
        async with server, client:
            await client.connect(server.listen_addrs[0])
            path = await fetch_blob_from_peer(client, server.peer_id, digest, dst)
            assert path.read_bytes() == data
            with pytest.raises(BlobError, match="the peer answered: blob 0+ not found"):
                await fetch_blob_from_peer(client, server.peer_id, bytes(32), dst)
            assert not dst.has(bytes(32))

    trio.run(main)
