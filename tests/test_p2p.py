"""Real py-libp2p hosts on 127.0.0.1: gossip, validation, request/response,
framing limits, bans and the security protocol on offer.

Every wait is "until a condition holds" under a generous deadline (a
failure, not a timing measurement)."""

import contextlib
import os

import pytest
import trio

from pouw.p2p import (
    FrameTooLarge,
    P2PError,
    P2PNode,
    PeerBanned,
    RemoteError,
    RequestRejected,
    Verdict,
)
from pouw.p2p.framing import encode_frame, read_frame
from pouw.p2p.thread import P2PThread

TOPIC = "/pouw/test/blocks"
DEADLINE = 20  # seconds; generous for 2 loaded cores


async def until(cond, what: str, timeout: float = DEADLINE):
    try:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"timed out waiting for {what}") from None


def run(fn):
    """Run an async test body under trio with an overall deadline."""

    async def main():
        with trio.fail_after(60):
            await fn()

    trio.run(main)


def test_identity_comes_from_the_seed():
    seed = bytes(range(32))
    assert P2PNode(seed).peer_id == P2PNode(seed).peer_id
    assert P2PNode(seed).peer_id != P2PNode(bytes(32)).peer_id
    with pytest.raises(ValueError, match="32 bytes"):
        P2PNode(b"short")


def test_gossip_reaches_all_and_invalid_messages_are_not_relayed():
    async def body():
        nodes = [P2PNode(os.urandom(32)) for _ in range(3)]
        a, b, c = nodes
        got = {i: [] for i in range(3)}
        seen_by_validator = {i: [] for i in range(3)}

        def make(i):
            def validator(peer, data):
                seen_by_validator[i].append(data)
                if data.startswith(b"junk"):
                    return Verdict.IGNORE
                return not data.startswith(b"bad")

            def handler(origin, data):
                got[i].append((origin, data))

            return validator, handler

        for i, n in enumerate(nodes):
            await n.subscribe(TOPIC, *make(i))
        async with a, b, c:
            # Line topology a - b - c: c only hears a through b's relay.
            await a.connect(b.listen_addrs[0])
            await c.connect(b.listen_addrs[0])
            await until(lambda: len(b.topic_peers(TOPIC)) == 2 and a.topic_peers(TOPIC) and c.topic_peers(TOPIC), "topic peers")

            await a.publish(TOPIC, b"block 1")
            await until(lambda: got[1] and got[2], "block 1 at b and c")
            assert got[1] == [(a.peer_id, b"block 1")]
            assert got[2] == [(a.peer_id, b"block 1")]
            assert got[0] == []  # own messages are not handed back

            await c.publish(TOPIC, b"block 2")
            await until(lambda: any(d == b"block 2" for _, d in got[0]), "block 2 at a")

            # Invalid: b's validator rejects it, so c never sees it and a is penalized.
            await a.publish(TOPIC, b"bad block")
            await until(lambda: b.score(a.peer_id) < 0, "penalty on a at b")
            await a.publish(TOPIC, b"block 3")
            await until(lambda: any(d == b"block 3" for _, d in got[2]), "block 3 at c")
            assert b"bad block" in seen_by_validator[1]
            assert b"bad block" not in seen_by_validator[2]
            assert all(d != b"bad block" for _, d in got[1] + got[2])

            # IGNORE drops without a penalty.
            score = b.score(a.peer_id)
            await a.publish(TOPIC, b"junk")
            await until(lambda: b"junk" in seen_by_validator[1], "junk at b's validator")
            await a.publish(TOPIC, b"block 4")
            await until(lambda: any(d == b"block 4" for _, d in got[2]), "block 4 at c")
            assert b"junk" not in seen_by_validator[2]
            assert b.score(a.peer_id) >= score

            with pytest.raises(ValueError, match="exceeds"):
                await a.publish(TOPIC, b"x" * (1 << 20))

    run(body)


def test_request_response_roundtrip_and_errors():
    async def body():
        server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))

        async def reverse(peer, data):
            assert peer == client.peer_id
            return data[::-1]

        def reject(peer, data):
            raise RequestRejected(f"no header at height {data.decode()}")

        def crash(peer, data):
            raise KeyError("internal detail")

        server.set_handler("/pouw/test/rev/1", reverse)
        server.set_handler("/pouw/test/reject/1", reject)
        server.set_handler("/pouw/test/crash/1", crash)
        async with server, client:
            await client.connect(server.listen_addrs[0])
            assert await client.request(server.peer_id, "/pouw/test/rev/1", b"abc") == b"cba"
            assert await client.request(str(server.peer_id), "/pouw/test/rev/1", b"") == b""
            big = os.urandom(300_000)
            assert await client.request(server.peer_id, "/pouw/test/rev/1", big) == big[::-1]
            with pytest.raises(RemoteError, match="no header at height 12"):
                await client.request(server.peer_id, "/pouw/test/reject/1", b"12")
            with pytest.raises(RemoteError, match="internal error while handling /pouw/test/crash/1"):
                await client.request(server.peer_id, "/pouw/test/crash/1", b"")
            with pytest.raises(P2PError, match="cannot open"):
                await client.request(server.peer_id, "/pouw/test/unknown/1", b"")
            # The server keeps serving after all of that.
            assert await client.request(server.peer_id, "/pouw/test/rev/1", b"xy") == b"yx"

    run(body)


def test_oversize_and_malformed_frames_are_rejected():
    async def body():
        server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        server.set_handler("/pouw/test/small/1", lambda p, d: b"ok", max_request=1024)
        server.set_handler("/pouw/test/bigreply/1", lambda p, d: b"z" * 5000)
        # The client believes larger requests are fine and small replies are expected.
        client.set_limits("/pouw/test/small/1", max_request=1 << 20, max_response=1024)
        client.set_limits("/pouw/test/bigreply/1", max_request=1024, max_response=1024)
        async with server, client:
            await client.connect(server.listen_addrs[0])
            with pytest.raises(RemoteError, match="exceeds the limit of 1024 bytes"):
                await client.request(server.peer_id, "/pouw/test/small/1", b"q" * 2000)
            assert server.score(client.peer_id) < 0
            with pytest.raises(FrameTooLarge):
                await client.request(server.peer_id, "/pouw/test/bigreply/1", b"")
            assert client.score(server.peer_id) < 0
            with pytest.raises(ValueError, match="exceeds the 1048576-byte limit"):
                await client.request(server.peer_id, "/pouw/test/small/1", b"q" * ((1 << 20) + 1))

            # A length prefix that never ends: the server drops the stream.
            stream = await client.open_stream(server.peer_id, "/pouw/test/small/1")
            await stream.write(b"\xff" * 11)
            with pytest.raises(Exception):
                with trio.fail_after(DEADLINE):
                    await read_frame(stream, 1024)
            # A frame that announces more than it sends, then EOF: no answer.
            stream = await client.open_stream(server.peer_id, "/pouw/test/small/1")
            await stream.write(encode_frame(b"12345")[:3])
            await stream.close()
            with pytest.raises(Exception):
                with trio.fail_after(DEADLINE):
                    await read_frame(stream, 1024)
            assert await client.request(server.peer_id, "/pouw/test/small/1", b"fine") == b"ok"

    run(body)


def test_banned_peer_is_cut_off_until_unbanned():
    async def body():
        a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        for n in (a, b):
            n.set_handler("/pouw/test/ping/1", lambda p, d: b"pong")
        async with a, b:
            await b.connect(a.listen_addrs[0])
            assert await b.request(a.peer_id, "/pouw/test/ping/1", b"") == b"pong"

            a.ban(b.peer_id, 600, "sent an invalid block")
            assert a.is_banned(b.peer_id) and str(b.peer_id) in a.bans()
            await until(lambda: b.peer_id not in a.host.get_connected_peers(), "a to drop b")
            await until(lambda: a.peer_id not in b.host.get_connected_peers(), "b to see the drop")
            with pytest.raises(PeerBanned):
                await a.request(b.peer_id, "/pouw/test/ping/1", b"")

            # b comes back: the connection is closed at once and nothing is served.
            try:
                await b.connect(a.listen_addrs[0])
            except P2PError:
                pass
            await until(lambda: b.peer_id not in a.host.get_connected_peers(), "a to close b's new connection")
            with pytest.raises(P2PError):
                await b.request(a.peer_id, "/pouw/test/ping/1", b"", timeout=5)

            a.unban(b.peer_id)
            await b.connect(a.listen_addrs[0])
            assert await b.request(a.peer_id, "/pouw/test/ping/1", b"") == b"pong"

    run(body)


def test_penalties_lead_to_a_ban():
    async def body():
        a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        async with a, b:
            await b.connect(a.listen_addrs[0])
            for _ in range(3):
                a.penalize(b.peer_id, "stale claim", 25)
            assert not a.is_banned(b.peer_id)
            assert a.score(b.peer_id) < -70
            a.penalize(b.peer_id, "stale claim", 30)
            assert a.is_banned(b.peer_id)
            await until(lambda: b.peer_id not in a.host.get_connected_peers(), "a to drop b")

    run(body)


def test_noise_is_the_only_security_protocol():
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    import multiaddr

    async def body():
        a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        offered = list(a.host.get_network().upgrader.security_multistream.transports)
        assert offered == ["/noise"]
        async with a, b:
            await b.connect(a.listen_addrs[0])
            conn = a.host.get_network().connections[b.peer_id][0]
            assert conn.muxed_conn.negotiated_security_protocol == "/noise"
            assert conn.muxed_conn.negotiated_muxer_protocol == "/yamux/1.0.0"

            # A host that only speaks plaintext cannot get in.
            kp = create_new_key_pair()
            plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
            async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                with pytest.raises(Exception):
                    with trio.fail_after(DEADLINE):
                        await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(a.listen_addrs[0])))
                assert plain.get_id() not in a.host.get_connected_peers()

    run(body)


def test_reconnects_to_bootstrap_peer():
    async def body():
        a = P2PNode(os.urandom(32), reconnect_interval=0.5)
        async with a:
            b = P2PNode(os.urandom(32), bootstrap=[a.listen_addrs[0]], reconnect_interval=0.5)
            async with b:
                await until(lambda: a.peer_id in b.host.get_connected_peers(), "bootstrap dial")
                await b.disconnect(a.peer_id)
                await until(lambda: a.peer_id not in b.host.get_connected_peers(), "disconnect")
                await until(lambda: a.peer_id in b.host.get_connected_peers(), "reconnect")
                assert str(a.peer_id) in b.known_peers()

    run(body)


def test_background_thread_for_sync_callers():
    a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
    b.set_handler("/pouw/test/rev/1", lambda p, d: d[::-1])
    with P2PThread(a) as ta, P2PThread(b):
        ta.call(a.connect, b.listen_addrs[0])
        assert ta.call(a.request, b.peer_id, "/pouw/test/rev/1", b"sync") == b"cnys"
        ta.call_sync(a.ban, b.peer_id, 60, "test")
        assert a.is_banned(b.peer_id)
    assert not a.running and not b.running
    with pytest.raises(P2PError, match="not running"):
        ta.call(a.request, b.peer_id, "/pouw/test/rev/1", b"")


def test_request_streams_are_reused_and_a_stale_one_is_retried(monkeypatch):
    import pouw.p2p.reqresp as reqresp

    async def body():
        server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        server.set_handler("/pouw/test/rev/1", lambda p, d: d[::-1])
        async with server, client:
            await client.connect(server.listen_addrs[0])
            for i in range(20):
                assert await client.request(server.peer_id, "/pouw/test/rev/1", b"ab%d" % i) == (b"ab%d" % i)[::-1]
            # One stream carried all twenty exchanges.
            assert len(client._pool.idle[(server.peer_id, "/pouw/test/rev/1")]) == 1
            assert server._inbound_requests == {client.peer_id: 1}
            # The server gives up on idle streams sooner than the client expects: the next
            # request finds its kept stream closed and asks again on a fresh one.
            monkeypatch.setattr(reqresp, "SERVER_IDLE", 0.2)
            assert await client.request(server.peer_id, "/pouw/test/rev/1", b"xy") == b"yx"
            await until(lambda: not server._inbound_requests, "the server to close the idle stream")
            assert await client.request(server.peer_id, "/pouw/test/rev/1", b"late") == b"etal"

    run(body)


def test_responses_up_to_the_protocol_limit_and_not_beyond():
    async def body():
        server, client = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        big = os.urandom(8 << 20)
        server.set_handler("/pouw/test/big/1", lambda p, d: big if d == b"8" else big + b"!" * (1 << 20),
                           max_response=16 << 20)
        async with server, client:
            await client.connect(server.listen_addrs[0])
            # 8 MiB is within the default response limit (8 MiB + the status byte is not; the default counts the payload).
            client.set_limits("/pouw/test/big/1", max_request=16, max_response=(8 << 20) + 1)
            assert await client.request(server.peer_id, "/pouw/test/big/1", b"8", timeout=60) == big
            # 9 MiB announced: refused from the length prefix, before the body is read.
            with pytest.raises(FrameTooLarge, match="exceeds the limit of 8388609 bytes"):
                await client.request(server.peer_id, "/pouw/test/big/1", b"9", timeout=60)
            assert client.score(server.peer_id) < 0
        with pytest.raises(ValueError, match="max_response must be 1..67108864"):
            client.set_limits("/pouw/test/big/1", max_request=16, max_response=1 << 30)

    run(body)


def test_publish_over_the_gossip_limit_is_a_clear_error():
    from pouw.p2p import MessageTooLarge

    async def body():
        a = P2PNode(os.urandom(32))
        async with a:
            with pytest.raises(MessageTooLarge, match="over a request/response protocol"):
                await a.publish(TOPIC, b"x" * (a.max_gossip_payload + 1))
            await a.publish(TOPIC, b"x" * a.max_gossip_payload)  # no peers, but within the limit

    run(body)


def test_penalize_and_ban_from_another_thread_return_at_once():
    import time

    a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))

    def stall(peer, data):
        time.sleep(2)  # a handler that blocks the node's loop
        return b"late"

    a.set_handler("/pouw/test/stall/1", stall)
    b.set_handler("/pouw/test/ping/1", lambda p, d: b"pong")
    with P2PThread(a) as ta, P2PThread(b) as tb:
        tb.call(b.connect, a.listen_addrs[0])
        busy = tb.submit(b.request, a.peer_id, "/pouw/test/stall/1", b"", 10.0)
        time.sleep(0.3)  # a's loop is now stuck in the handler
        start = time.monotonic()
        assert ta.penalize(b.peer_id, 30, "stale claim") == pytest.approx(-30, abs=1)
        ta.penalize(b.peer_id, "old order", 10)  # (peer, reason, points) is still understood
        ta.ban(b.peer_id, 60, "invalid sync answer")
        assert time.monotonic() - start < 0.5
        assert a.is_banned(b.peer_id) and "invalid sync answer" in a.bans()[str(b.peer_id)]["reason"]
        assert a.score(b.peer_id) < -35
        # The stalled request is not answered: the ban applied first once the loop was free.
        with pytest.raises(P2PError, match="closed the stream without answering"):
            busy.result(10)
        # Once the loop is free the ban takes effect on the network.
        deadline = time.monotonic() + DEADLINE
        while b.peer_id in a.host.get_connected_peers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.peer_id not in a.host.get_connected_peers()
        with pytest.raises(P2PError):
            tb.call(b.request, a.peer_id, "/pouw/test/stall/1", b"", 5.0)


def test_peer_connected_callbacks_and_inbound_stream_cap():
    from pouw.p2p.node import MAX_INBOUND_REQUEST_STREAMS

    async def body():
        a, b = P2PNode(os.urandom(32)), P2PNode(os.urandom(32))
        seen = []
        a.on_peer_connected(seen.append)
        a.set_handler("/pouw/test/rev/1", lambda p, d: d[::-1])
        async with a, b:
            await b.connect(a.listen_addrs[0])
            await until(lambda: b.peer_id in seen, "the connect callback")
            # Streams that never send a request: the server holds at most the cap.
            streams = []
            for _ in range(MAX_INBOUND_REQUEST_STREAMS):
                streams.append(await b.open_stream(a.peer_id, "/pouw/test/rev/1"))
            await until(lambda: a._inbound_requests.get(b.peer_id) == MAX_INBOUND_REQUEST_STREAMS, "the cap")
            with pytest.raises(Exception):  # one more is reset at once (during or right after negotiation)
                with trio.fail_after(DEADLINE):
                    extra = await b.open_stream(a.peer_id, "/pouw/test/rev/1")
                    await extra.write(encode_frame(b"q"))
                    await read_frame(extra, 1024)
            assert a._inbound_requests.get(b.peer_id) == MAX_INBOUND_REQUEST_STREAMS
            for s in streams:
                with contextlib.suppress(Exception):
                    await s.reset()
            await until(lambda: not a._inbound_requests, "the streams to go")
            assert await b.request(a.peer_id, "/pouw/test/rev/1", b"ok") == b"ko"

    run(body)
