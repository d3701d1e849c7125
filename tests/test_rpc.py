"""JSON-RPC server and client over real HTTP on 127.0.0.1."""

import base64
import http.client
import json
import os
import socket
import stat

import pytest

from pouw.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcAuthError,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcServer,
)


def add(a: int, b: int = 0) -> int:
    return a + b


def boom() -> None:
    raise RuntimeError("disk on fire")


def refuse(height: int) -> None:
    raise RpcError(f"block {height} not found", code=-5)


def not_json() -> object:
    return object()


@pytest.fixture
def server(tmp_path):
    srv = RpcServer(
        {"add": add, "boom": boom, "refuse": refuse, "not_json": not_json, "echo": lambda **kw: kw},
        host="127.0.0.1",
        port=0,
        datadir=tmp_path,
        max_body=4096,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _raw_post(srv, body: bytes, auth: str | None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_cookie_file_is_private_and_removed_on_stop(tmp_path):
    srv = RpcServer({"add": add}, port=0, datadir=tmp_path).start()
    cookie = tmp_path / ".cookie"
    try:
        text = cookie.read_text()
        user, secret = text.split(":")
        assert user == "__cookie__" and len(bytes.fromhex(secret)) == 32
        assert stat.S_IMODE(cookie.stat().st_mode) == 0o600
    finally:
        srv.stop()
    assert not cookie.exists()


def test_call_with_good_cookie(server, tmp_path):
    client = RpcClient(server.url, datadir=tmp_path)
    assert client.call("add", a=2, b=3) == 5
    assert client.call("add", 4, 5) == 9
    assert client.call("echo", x=[1, "y"]) == {"x": [1, "y"]}


def test_wrong_cookie_is_401(server, tmp_path):
    status, body = _raw_post(server, b'{"method":"add","params":{"a":1},"id":1}', "__cookie__:" + "00" * 32)
    assert status == 401
    status, _ = _raw_post(server, b'{"method":"add","params":{"a":1},"id":1}', None)
    assert status == 401
    bad = tmp_path / "other.cookie"
    bad.write_text("__cookie__:" + "11" * 32)
    with pytest.raises(RpcAuthError, match="refused the cookie"):
        RpcClient(server.url, cookie_path=bad).call("add", a=1)


def test_unknown_method_and_bad_params(server, tmp_path):
    client = RpcClient(server.url, datadir=tmp_path)
    with pytest.raises(RpcError, match="unknown method 'nope'") as ei:
        client.call("nope")
    assert ei.value.code == METHOD_NOT_FOUND
    with pytest.raises(RpcError, match="invalid params for add") as ei:
        client.call("add", c=1)
    assert ei.value.code == INVALID_PARAMS


def test_handler_errors_do_not_stop_the_server(server, tmp_path):
    client = RpcClient(server.url, datadir=tmp_path)
    with pytest.raises(RpcError, match="disk on fire") as ei:
        client.call("boom")
    assert ei.value.code == INTERNAL_ERROR
    with pytest.raises(RpcError, match="block 7 not found") as ei:
        client.call("refuse", height=7)
    assert ei.value.code == -5
    with pytest.raises(RpcError, match="not JSON"):
        client.call("not_json")
    assert client.call("add", a=1, b=1) == 2


def test_malformed_json_is_a_parse_error(server):
    auth = (server.cookie_path).read_text()
    status, body = _raw_post(server, b"{not json", auth)
    assert status == 200
    assert json.loads(body)["error"]["code"] == PARSE_ERROR


def test_body_too_large_is_413(server):
    auth = server.cookie_path.read_text()
    payload = json.dumps({"method": "echo", "params": {"x": "a" * 10_000}, "id": 1}).encode()
    status, body = _raw_post(server, payload, auth)
    assert status == 413
    assert "exceeds the limit of 4096" in json.loads(body)["error"]["message"]
    # Still serving.
    assert RpcClient(server.url, cookie_path=server.cookie_path).call("add", a=1) == 1


def test_not_running_message(tmp_path):
    # A port nobody listens on, and no cookie.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RpcClient(f"http://127.0.0.1:{port}", datadir=tmp_path)
    with pytest.raises(RpcConnectionError, match=r"cannot reach the pouw node at .*is `pouw node start` running\?"):
        client.call("add", a=1)
    # Cookie present (stale) but nothing listening.
    (tmp_path / ".cookie").write_text("__cookie__:" + "22" * 32)
    os.chmod(tmp_path / ".cookie", 0o600)
    with pytest.raises(RpcConnectionError, match="is `pouw node start` running"):
        client.call("add", a=1)
