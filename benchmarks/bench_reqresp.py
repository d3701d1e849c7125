"""Request/response over pouw's libp2p layer against raw TCP on loopback.

    python benchmarks/bench_reqresp.py [--quick] [--json]

Sync moves blocks as one framed response per request (P2PNode.request on a
fresh yamux stream over Noise). Measured here, with the serving node in
another process so the two ends do not share one Python thread:

  bulk     one response of 64 x 60 KB blocks (a msgpack array, ~3.84 MB)
           per request, repeated; MB/s of payload
  small    a 32-byte request answered by 32 bytes, repeated; ms per round
           trip (what opening a stream costs)

Baselines in the same run: the same request/response exchanges over one
plain TCP connection (length-prefixed, no encryption, no muxer), and the
same bytes through ChaCha20-Poly1305 in 64 KiB Noise-sized messages on one
core (the cryptographic floor of any encrypted transport here). CPU time of
both libp2p ends is reported too: on a shared machine it is steadier than
wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402

BLOCKS = 64
BLOCK_BYTES = 60_000
BULK_PROTOCOL = "/pouw/bench/bulk/1"
SMALL_PROTOCOL = "/pouw/bench/small/1"
MB = 1_000_000


def make_payload() -> bytes:
    return msgpack.packb([os.urandom(BLOCK_BYTES) for _ in range(BLOCKS)], use_bin_type=True)


# ---------------------------------------------------------------- libp2p


def _serve_p2p(conn) -> None:
    """Child process: a P2PNode answering the bulk and small protocols."""
    import trio

    from pouw.p2p import P2PNode

    payload = make_payload()

    async def main():
        node = P2PNode(os.urandom(32))
        node.set_handler(BULK_PROTOCOL, lambda peer, data: payload, max_response=8 << 20)
        node.set_handler(SMALL_PROTOCOL, lambda peer, data: data)
        async with node:
            conn.send((node.listen_addrs[0], len(payload)))
            while await trio.to_thread.run_sync(conn.recv) == "cpu":  # until told to stop
                conn.send(time.process_time())

    trio.run(main)


def bench_p2p(bulk_runs: int, small_runs: int) -> dict:
    import trio

    from pouw.p2p import P2PNode

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_serve_p2p, args=(child,), daemon=True)
    proc.start()
    out: dict = {}

    async def main():
        node = P2PNode(os.urandom(32))
        node.set_limits(BULK_PROTOCOL, max_request=1024, max_response=8 << 20)
        async with node:
            addr, size = await trio.to_thread.run_sync(parent.recv)
            peer = await node.connect(addr)
            async def server_cpu() -> float:
                parent.send("cpu")
                return await trio.to_thread.run_sync(parent.recv)

            for _ in range(3):  # warm up: connection, identify, window growth
                await node.request(peer, BULK_PROTOCOL, b"q", timeout=60)
            times = []
            cpu0, scpu0 = time.process_time(), await server_cpu()
            for _ in range(bulk_runs):
                t = time.perf_counter()
                got = await node.request(peer, BULK_PROTOCOL, b"q", timeout=60)
                times.append(time.perf_counter() - t)
                assert len(got) == size
            out["bulk_cpu_s"] = (time.process_time() - cpu0 + await server_cpu() - scpu0) / bulk_runs
            out["bulk_s"] = times
            out["bulk_bytes"] = size
            rtts = []
            msg = os.urandom(32)
            cpu0, scpu0 = time.process_time(), await server_cpu()
            for _ in range(small_runs):
                t = time.perf_counter()
                assert await node.request(peer, SMALL_PROTOCOL, msg, timeout=60) == msg
                rtts.append(time.perf_counter() - t)
            out["small_cpu_s"] = (time.process_time() - cpu0 + await server_cpu() - scpu0) / small_runs
            out["small_s"] = rtts

    try:
        trio.run(main)
    finally:
        parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return out


# ---------------------------------------------------------------- raw TCP


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("closed")
        got += k
    return bytes(buf)


def _serve_tcp(conn) -> None:
    """Child process: answers length-prefixed requests on one TCP connection."""
    payload = make_payload()
    lsock = socket.create_server(("127.0.0.1", 0))
    conn.send((lsock.getsockname()[1], len(payload)))
    c, _ = lsock.accept()
    with c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                (n,) = struct.unpack(">I", _recv_exact(c, 4))
            except ConnectionError:
                return
            req = _recv_exact(c, n)
            reply = payload if req == b"q" else req
            c.sendall(struct.pack(">I", len(reply)) + reply)


def bench_tcp(bulk_runs: int, small_runs: int) -> dict:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_serve_tcp, args=(child,), daemon=True)
    proc.start()
    port, size = parent.recv()
    out: dict = {}
    try:
        cpu0 = time.process_time()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def ask(req: bytes) -> bytes:
                s.sendall(struct.pack(">I", len(req)) + req)
                (n,) = struct.unpack(">I", _recv_exact(s, 4))
                return _recv_exact(s, n)

            for _ in range(3):
                ask(b"q")
            times = []
            for _ in range(bulk_runs):
                t = time.perf_counter()
                assert len(ask(b"q")) == size
                times.append(time.perf_counter() - t)
            rtts = []
            msg = os.urandom(32)
            for _ in range(small_runs):
                t = time.perf_counter()
                assert ask(msg) == msg
                rtts.append(time.perf_counter() - t)
        out = {"bulk_s": times, "small_s": rtts, "bulk_bytes": size,
               "client_cpu_s": time.process_time() - cpu0}
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return out


def bench_cipher(size: int, runs: int) -> float:
    """Seconds to seal and open `size` bytes in 65,519-byte ChaCha20-Poly1305 messages (Noise's cipher)."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = ChaCha20Poly1305(os.urandom(32))
    data = os.urandom(size)
    step = 65535 - 16
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        for i, off in enumerate(range(0, size, step)):
            nonce = struct.pack("<4xQ", i)
            key.decrypt(nonce, key.encrypt(nonce, data[off : off + step], None), None)
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------- main


def summarize(r: dict) -> dict:
    bulk = r["bulk_s"]
    out = {
        "bulk_MBps": r["bulk_bytes"] / statistics.median(bulk) / MB,
        "bulk_s_median": statistics.median(bulk),
        "bulk_s_min": min(bulk),
        "small_ms_median": statistics.median(r["small_s"]) * 1000,
    }
    if "bulk_cpu_s" in r:
        out["bulk_cpu_ms_per_response"] = r["bulk_cpu_s"] * 1000
        out["small_cpu_ms_per_exchange"] = r["small_cpu_s"] * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args()
    bulk_runs, small_runs = (5, 50) if args.quick else (20, 300)
    p2p = summarize(bench_p2p(bulk_runs, small_runs))
    tcp = summarize(bench_tcp(bulk_runs, small_runs))
    size = BLOCKS * BLOCK_BYTES
    cipher_s = bench_cipher(size, 5)
    res = {
        "response_bytes": size,
        "libp2p": p2p,
        "raw_tcp": tcp,
        "cipher_seal_open_MBps": size / cipher_s / MB,
        "ratio_bulk_libp2p_to_tcp": p2p["bulk_MBps"] / tcp["bulk_MBps"],
        "ratio_small_rtt_libp2p_to_tcp": p2p["small_ms_median"] / tcp["small_ms_median"],
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"request/response on loopback, server in another process ({bulk_runs} bulk, {small_runs} small requests)\n")
    print(f"{'':28} {'libp2p (Noise+yamux)':>22} {'raw TCP':>12} {'ratio':>8}")
    print(f"{'64 x 60 KB in one response':28} {p2p['bulk_MBps']:17.1f} MB/s {tcp['bulk_MBps']:7.1f} MB/s"
          f" {res['ratio_bulk_libp2p_to_tcp']:8.3f}")
    print(f"{'  seconds per response':28} {p2p['bulk_s_median']:19.4f} s {tcp['bulk_s_median']:9.4f} s")
    print(f"{'32-byte round trip':28} {p2p['small_ms_median']:19.3f} ms {tcp['small_ms_median']:8.3f} ms"
          f" {res['ratio_small_rtt_libp2p_to_tcp']:7.1f}x")
    print(f"\nCPU seconds, both ends together (steadier than wall time on a shared machine):"
          f" {p2p['bulk_cpu_ms_per_response']:.1f} ms per 3.84 MB response"
          f" ({size / p2p['bulk_cpu_ms_per_response'] / 1000:.0f} MB per CPU-second),"
          f" {p2p['small_cpu_ms_per_exchange']:.2f} ms per 32-byte exchange")
    print(f"\nChaCha20-Poly1305 seal+open of the same bytes in Noise-sized messages, one core: "
          f"{res['cipher_seal_open_MBps']:.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
