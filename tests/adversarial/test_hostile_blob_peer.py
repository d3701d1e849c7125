"""Attack: a peer serving `/pouw/blob/1` lies about a blob or stalls its download.

Real libp2p hosts on loopback; the lying peer speaks the real framing with a
script of its own. Before, `fetch_blob_from_peer` took the peer's word for
the size (bounded only by an optional max_size) and had only a per-chunk
timeout, so a peer answering every chunk just in time held the fetch
forever.
"""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest
import trio

from pouw.blobstore import BlobError, BlobStore, FetchLimitError, FetchLimits
from pouw.p2p import P2PNode
from pouw.p2p.blob import BLOB_PROTOCOL, CHUNK_SIZE, MAX_REQUEST, fetch_blob_from_peer, serve_blobs
from pouw.p2p.framing import FrameError, ok_frame, read_frame

SIZE = 4 * CHUNK_SIZE
DATA = os.urandom(SIZE)
DIGEST = hashlib.sha256(DATA).digest()
FAST = FetchLimits(deadline=20.0, min_rate=4 * CHUNK_SIZE, grace=0.5, silence=5.0)


def lying_server(node: P2PNode, answer) -> None:
    """Serve /pouw/blob/1 with `answer(offset, length) -> (total, chunk, delay)`; delay None = never answer."""

    async def handle(peer, stream) -> None:
        while True:
            try:
                digest, offset, length = msgpack.unpackb(await read_frame(stream, MAX_REQUEST))
            except FrameError:
                return
            total, chunk, delay = answer(offset, length)
            if delay is None:
                await trio.sleep_forever()
            await trio.sleep(delay)
            await stream.write(ok_frame(total.to_bytes(8, "big") + chunk))

    node.set_stream_handler(BLOB_PROTOCOL, handle)


def honest(offset: int, length: int, delay: float = 0.0):
    return SIZE, DATA[offset : offset + length], delay


async def attempt(tmp_path, answer, **kwargs):
    """Fetch DIGEST from a peer answering with `answer`; returns (error or None, seconds, client score of server, store)."""
    server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
    lying_server(server, answer)
    store = BlobStore(tmp_path / os.urandom(4).hex())
    async with server, client:
        await client.connect(server.listen_addrs[0])
        start = trio.current_time()
        try:
            with trio.fail_after(60):
                await fetch_blob_from_peer(client, server.peer_id, DIGEST, store, **kwargs)
            err = None
        except BlobError as exc:
            err = exc
        return err, trio.current_time() - start, client.score(server.peer_id), store


def nothing_kept(store: BlobStore) -> bool:
    return not store.has(DIGEST) and list(store.tmp_dir.iterdir()) == []


def test_a_peer_offering_more_than_the_declared_size_is_refused_at_the_first_chunk(tmp_path):
    async def main():
        err, _, _, store = await attempt(tmp_path, lambda off, n: (10 << 30, b"z" * n, 0), size=SIZE, limits=FAST)
        assert isinstance(err, FetchLimitError) and f"announced 10737418240 bytes, not the declared size of {SIZE}" in str(err)
        assert nothing_kept(store)
        # Without a declared size, the caller's bound.
        err, _, _, store = await attempt(tmp_path, lambda off, n: (10 << 30, b"z" * n, 0), max_size=SIZE, limits=FAST)
        assert isinstance(err, FetchLimitError) and f"over the limit of {SIZE} bytes" in str(err)

    trio.run(main)


def test_wrong_bytes_are_discarded_and_the_peer_penalized(tmp_path):
    async def main():
        err, _, score, store = await attempt(tmp_path, lambda off, n: (SIZE, os.urandom(min(n, SIZE - off)), 0),
                                             size=SIZE, limits=FAST)
        assert err is not None and "digest mismatch" in str(err), err
        assert score < -45  # 50 points, less a moment of recovery
        assert nothing_kept(store)

    trio.run(main)


def test_a_peer_changing_its_story_is_penalized(tmp_path):
    async def main():
        err, _, score, store = await attempt(tmp_path, lambda off, n: (SIZE + off, DATA[off : off + n], 0),
                                             size=SIZE, limits=FAST)
        assert err is not None and "changing size" in str(err), err
        assert score < -5  # 10 points, less a moment of recovery
        assert nothing_kept(store)

    trio.run(main)


def test_a_dripping_peer_is_cut_at_the_minimum_rate(tmp_path):
    async def main():
        # Every chunk comes, each just 0.6 s late: a per-chunk timeout never fires.
        err, seconds, _, store = await attempt(tmp_path, lambda off, n: honest(off, n, 0.6), size=SIZE, limits=FAST)
        assert isinstance(err, FetchLimitError) and "below the minimum average rate" in str(err), err
        assert seconds < 2.5
        assert nothing_kept(store)

    trio.run(main)


def test_total_deadline_and_silence(tmp_path):
    async def main():
        limits = FetchLimits(deadline=1.0, min_rate=0, grace=0, silence=5.0)
        err, seconds, _, store = await attempt(tmp_path, lambda off, n: honest(off, n, 0.4), size=SIZE, limits=limits)
        assert isinstance(err, FetchLimitError) and "deadline of 1 s" in str(err), err
        assert seconds < 2.0 and nothing_kept(store)
        limits = FetchLimits(deadline=20.0, min_rate=0, grace=0, silence=0.5)
        err, seconds, _, store = await attempt(tmp_path, lambda off, n: (SIZE, b"", None), size=SIZE, limits=limits)
        assert isinstance(err, FetchLimitError) and "sent nothing for 0.5 s" in str(err), err
        assert seconds < 2.0 and nothing_kept(store)

    trio.run(main)


def test_an_honest_peer_serves_the_blob(tmp_path):
    async def main():
        src = BlobStore(tmp_path / "src")
        assert src.put_bytes(DATA) == DIGEST
        server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        serve_blobs(server, src)
        dst = BlobStore(tmp_path / "dst")
        async with server, client:
            await client.connect(server.listen_addrs[0])
            path = await fetch_blob_from_peer(client, server.peer_id, DIGEST, dst, size=SIZE, limits=FAST)
            assert path.read_bytes() == DATA
            with pytest.raises(FetchLimitError, match="announced"):
                await fetch_blob_from_peer(client, server.peer_id, DIGEST, BlobStore(tmp_path / "d2"), size=SIZE - 1)
            assert client.score(server.peer_id) == 0  # a size we got wrong is not the peer's fault

    trio.run(main)
