"""Attack: exhaust a node's HTTP services (JSON-RPC and the blob server) from a socket.

Before, both servers kept one thread per connection forever (200 half-open
sockets held 380 threads), deeply nested JSON killed the request thread so
the client never got an answer, and parameters of the wrong type surfaced as
internal errors. Real servers, real sockets.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import pytest

from pouw.blobserve import BlobServer
from pouw.blobstore import BlobStore
from pouw.httpthread import ServiceLimits
from pouw.rpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, InvalidParams, RpcClient, RpcError, RpcServer

CAP = 16
LIMITS = ServiceLimits(max_connections=CAP, request_timeout=1.5, send_timeout=5.0)


def get_height(height: int) -> dict:
    if height > 1000:
        raise InvalidParams(f"height {height} is above the tip")
    return {"height": height}


def pick(items: list, flag: bool = False) -> int:
    return len(items) + flag


def crash(x) -> int:
    return x + 1  # a TypeError inside the handler is a bug of ours: -32603, not -32602


@pytest.fixture
def rpc(tmp_path):
    gate = threading.Event()

    def hold() -> str:
        gate.wait(10)
        return "released"

    handlers = {"ping": lambda: "pong", "getheight": get_height, "pick": pick, "crash": crash, "echo": lambda x: x,
                "hold": hold}
    srv = RpcServer(handlers, port=0, datadir=tmp_path, max_body=4096, limits=LIMITS).start()
    srv.gate = gate
    try:
        yield srv
    finally:
        gate.set()
        srv.stop()


def post(srv: RpcServer, body: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    auth = "Basic " + base64.b64encode(srv.cookie_path.read_bytes()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers={"Authorization": auth, "Content-Length": str(len(body))})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_until(cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def open_half_open(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def test_half_open_sockets_cost_at_most_the_cap_and_a_real_call_still_answers(rpc, tmp_path):
    base = threading.active_count()
    socks = open_half_open(rpc.port, 200)
    try:
        # Each newcomer evicted the connection waiting longest: threads stay within the cap.
        assert wait_until(lambda: threading.active_count() <= base + CAP, 3), threading.active_count() - base
        assert wait_until(lambda: rpc._httpd.evictions >= 200 - CAP, 3)
        client = RpcClient(rpc.url, datadir=tmp_path, timeout=5)
        start = time.monotonic()
        assert client.call("ping") == "pong"
        assert time.monotonic() - start < 1.0
        assert threading.active_count() <= base + CAP + 1
    finally:
        for s in socks:
            s.close()


def test_dripping_headers_are_cut_at_the_request_deadline(rpc, tmp_path):
    socks = open_half_open(rpc.port, 4, b"POST / HTTP/1.1\r\nX-Slow: ")
    try:
        for s in socks:
            s.sendall(b"a")  # still dripping
        # Every request must arrive whole within 1.5 s: the server hangs up on them.
        for s in socks:
            s.settimeout(5)
            assert s.recv(1) == b""
    finally:
        for s in socks:
            s.close()
    assert RpcClient(rpc.url, datadir=tmp_path).call("ping") == "pong"


def test_when_every_slot_serves_a_request_a_newcomer_gets_503_at_once(rpc, tmp_path):
    results = []

    def call_hold():
        results.append(RpcClient(rpc.url, datadir=tmp_path, timeout=15).call("hold"))

    threads = [threading.Thread(target=call_hold) for _ in range(CAP)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: rpc._httpd.open_connections == CAP and all(
            c.busy for c in rpc._httpd._conns.values()), 5)
        start = time.monotonic()
        status, answer = post(rpc, b'{"jsonrpc":"2.0","method":"ping","id":1}')
        assert status == 503 and answer["error"]["code"] == INTERNAL_ERROR and "busy" in answer["error"]["message"]
        assert time.monotonic() - start < 1.0
    finally:
        rpc.gate.set()
        for t in threads:
            t.join(10)
    assert results == ["released"] * CAP
    assert RpcClient(rpc.url, datadir=tmp_path).call("ping") == "pong"


def test_deeply_nested_json_is_answered(rpc):
    for body in (b"[" * 100_000, b'{"jsonrpc":"2.0","method":"echo","params":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b'},"id":1}'):
        status, answer = post(rpc, body[:4096])
        assert status == 200 and answer["error"]["code"] == PARSE_ERROR, answer
    status, answer = post(rpc, b'{"jsonrpc":"2.0","method":"echo","params":{"x":' + b"[" * 3000 + b"]" * 3000 + b'},"id":1}')
    assert status == 413  # over the 4096-byte body cap, refused unread
    status, answer = post(rpc, b"[" * 3000)
    assert answer["error"]["code"] == PARSE_ERROR and "nested too deeply" in answer["error"]["message"]


def test_malformed_requests_get_invalid_request(rpc):
    for body, fragment in (
        (b'"just a string"', "must be a JSON object"),
        (b"[]", "batch requests are not supported"),
        (b'{"method": 5, "id": 1}', "needs a string 'method'"),
        (b'{"method": "ping", "id": {"a": 1}}', "id must be a string, a number or null"),
        (b"\xff\xfe", "not valid JSON"),
    ):
        status, answer = post(rpc, body)
        code = answer["error"]["code"]
        assert status == 200 and code in (PARSE_ERROR, INVALID_REQUEST) and fragment in answer["error"]["message"], answer


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"height": 5, "hieght": 5}, "unexpected keyword argument 'hieght'"),
        ({"hieght": 5}, "missing a required argument: 'height'"),
        ([1, 2], "too many positional arguments"),
        ({}, "missing a required argument: 'height'"),
        ({"height": "5"}, "height must be an integer, got a string"),
        ({"height": True}, "height must be an integer, got a boolean"),
        ({"height": 5000}, "height 5000 is above the tip"),
    ],
)
def test_bad_params_are_invalid_params(rpc, params, fragment):
    status, answer = post(rpc, json.dumps({"jsonrpc": "2.0", "method": "getheight", "params": params, "id": 3}).encode())
    assert status == 200 and answer["id"] == 3
    assert answer["error"]["code"] == INVALID_PARAMS and fragment in answer["error"]["message"], answer


def test_annotated_containers_and_internal_errors(rpc, tmp_path):
    client = RpcClient(rpc.url, datadir=tmp_path)
    assert client.call("pick", items=[1, 2], flag=True) == 3
    with pytest.raises(RpcError, match="items must be an array, got an object") as ei:
        client.call("pick", items={"a": 1})
    assert ei.value.code == INVALID_PARAMS
    with pytest.raises(RpcError, match="crash failed: TypeError") as ei:
        client.call("crash", x="text")
    assert ei.value.code == INTERNAL_ERROR


def test_rpc_host_is_its_own_and_loopback_by_default(tmp_path):
    srv = RpcServer({"ping": lambda: "pong"}, port=0, datadir=tmp_path / "a").start()
    try:
        assert srv.host == "127.0.0.1" and srv._httpd.server_address[0] == "127.0.0.1"
    finally:
        srv.stop()
    srv = RpcServer({"ping": lambda: "pong"}, host="127.0.0.2", port=0, datadir=tmp_path / "b").start()
    try:
        assert srv.url.startswith("http://127.0.0.2:")
        assert RpcClient(srv.url, datadir=tmp_path / "b").call("ping") == "pong"
    finally:
        srv.stop()


def test_blob_server_half_open_sockets_and_stalled_readers(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"x" * (8 << 20)
    digest = store.put_bytes(data)
    base = threading.active_count()
    with BlobServer(store, limits=ServiceLimits(max_connections=CAP, request_timeout=1.5, send_timeout=1.0)) as srv:
        socks = open_half_open(srv.port, 200)
        # Readers that ask for the blob and never read it: dropped after send_timeout without progress.
        stalled = open_half_open(srv.port, 4, f"GET /blob/{digest.hex()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for s in stalled:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            assert wait_until(lambda: threading.active_count() <= base + CAP + 1, 3), threading.active_count() - base
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            start = time.monotonic()
            conn.request("GET", f"/blob/{digest.hex()}")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == data
            assert time.monotonic() - start < 2.0
            conn.close()
            assert wait_until(lambda: srv._httpd.open_connections <= CAP, 5)
        finally:
            for s in socks + stalled:
                s.close()
        assert wait_until(lambda: srv._httpd.open_connections == 0, 5)


def test_a_node_listening_for_peers_on_every_address_keeps_its_rpc_on_loopback(tmp_path):
    """`--host 0.0.0.0` opens the p2p host and the blob server to the world; the RPC, the operator's door, stays local."""
    from consensus.fixtures import make_test_params
    from fullnode.config import NodeConfig
    from fullnode.node import FullNode

    node = FullNode(NodeConfig(datadir=tmp_path / "node", params=make_test_params(), host="0.0.0.0")).start()
    try:
        assert node.rpc._httpd.server_address[0] == "127.0.0.1"
        assert node.blob_server._httpd.server_address[0] == "0.0.0.0"
        assert RpcClient(node.rpc.url, datadir=tmp_path / "node").call("getinfo")["height"] == 0
    finally:
        node.stop()
