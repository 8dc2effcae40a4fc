"""Issue 10 item 8 against the real server: HEAD probes answer 200, and an over-long URL
gets a JSON 414 like every other error (even past the HTTP parser's own limit, and while
the client is still sending)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx
import orjson

from tests.faults.helpers import ServerProcess, wait_for, write_snapshot


def _raw_get(port: int, target: bytes) -> tuple[int, dict[str, str], bytes]:
    return _raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_head_probes_and_json_414(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log")
    try:
        server.wait_listening()
        wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200, 30, "ready")
        for path in ("/healthz", "/readyz"):
            r = httpx.head(server.base + path)
            assert r.status_code == 200 and r.content == b"", path
        # 100,000 is past httptools' own limit (about 64 KiB); a client still sending
        # a megabyte when the answer comes must read it, not a reset connection.
        for n in (9_000, 100_000, 1_000_000):
            status, headers, body = _raw_get(server.port, b"/v1/items/" + b"x" * n)
            assert status == 414, (n, status, body[:200])
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["detail"]["reason"] == "uri_too_long"
        # Bytes that are no HTTP get a JSON 400 too, however much follows them.
        status, headers, body = _raw(server.port, b"NOT HTTP AT ALL\r\n\r\n" + b"y" * 500_000)
        assert status == 400, (status, body[:200])
        assert orjson.loads(body)["detail"]["reason"] == "bad_request"
        assert headers["x-content-type-options"] == "nosniff"  # the parser's answers too
        # A body that breaks off as a malformed chunk, after the app has started on
        # the request: one JSON 400, counted once (not also as the app's 500).
        status, headers, body = _raw(server.port, b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
                                     b"Transfer-Encoding: chunked\r\n"
                                     b"Content-Type: application/json\r\n\r\nzz\r\n")
        assert status == 400, (status, body[:200])
        status, headers, body = _raw_get(server.port, b"/v1/recommendations?user_id=u000001")
        assert status == 200  # the server still answers after refusing those
        # The parser answered them before the app, and they are counted all the same.
        text = httpx.get(f"{server.base}/metrics").text

        def responses(method: str, status: str) -> float:
            want = (f'liverec_serving_responses_total{{method="{method}",'
                    f'route="unmatched",status="{status}"}} ')
            return sum(float(line[len(want):]) for line in text.splitlines()
                       if line.startswith(want))

        assert responses("GET", "414") == 3, text
        assert responses("other", "400") == 1, text
        assert responses("POST", "400") == 1, text
        assert 'route="/v1/events",status="500"' not in text, text
    finally:
        server.stop()


def _responses(port: int, request: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) the server sends on one connection for ``request``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), rest[:n]))
        data = rest[n:]
    return out


def test_pipelined_requests_are_answered_before_the_malformed_one(tmp_path: Path) -> None:
    """Good requests pipelined ahead of a malformed one in one packet get their answers,
    in order, before its JSON 400; the connection then closes."""
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log")
    try:
        server.wait_listening()
        wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200, 30, "ready")
        get = b"GET /v1/recommendations?user_id=u000001 HTTP/1.1\r\nHost: x\r\n\r\n"
        got = _responses(server.port, get + get + b"NOT HTTP AT ALL\r\n\r\n")
        assert [status for status, _ in got] == [200, 200, 400], got
        assert "items" in orjson.loads(got[0][1]), got[0]
        assert orjson.loads(got[2][1])["detail"]["reason"] == "bad_request"
        # An over-long URL behind a good request: the 200, then the 414.
        got = _responses(server.port, get + b"GET /v1/items/" + b"x" * 9_000
                         + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [status for status, _ in got] == [200, 414], got
        # A pipelined request whose body breaks off: the one before it is answered.
        got = _responses(server.port, get + b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n"
                         b"Content-Type: application/json\r\n\r\nzz\r\n")
        assert [status for status, _ in got] == [200, 400], got
        text = httpx.get(f"{server.base}/metrics").text
        assert 'method="other",route="unmatched",status="400"} 1.0' in text, text
        assert 'method="GET",route="unmatched",status="414"} 1.0' in text, text
        assert 'method="POST",route="unmatched",status="400"} 1.0' in text, text
    finally:
        server.stop()


def test_a_body_that_breaks_or_stops_while_the_app_reads_it_logs_no_error(
    tmp_path: Path,
) -> None:
    """A POST whose chunked body breaks after the app started reading it gets the JSON
    400 and is counted once; one whose client leaves mid-body is not an answer. Neither
    is a server fault: the log holds no ERROR (it held a ClientDisconnect traceback)."""
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log")
    head = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n5\r\n[{\"a\"\r\n")
    try:
        server.wait_listening()
        wait_for(lambda: httpx.get(f"{server.base}/readyz").status_code == 200, 30, "ready")
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(head)
            time.sleep(0.3)  # the app task runs and waits for the rest of the body
            s.sendall(b"zz\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 "), data
        assert b'"reason":"bad_request"' in data, data
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(head)
            time.sleep(0.3)
        # The server has seen both connections end before it answers this.
        time.sleep(0.5)
        text = httpx.get(f"{server.base}/metrics").text
        assert 'method="POST",route="unmatched",status="400"} 1.0' in text, text
        assert 'route="/v1/events"' not in text, text
    finally:
        server.stop()
    log = server.log_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


def test_request_heads_are_bounded_and_forwarded_addresses_not_believed(
    tmp_path: Path,
) -> None:
    """One huge header, or very many, get a JSON 431 before any key check (uvicorn read
    a 100 MiB header whole); a big head under the bound and a big body pass. A caller
    cannot pick its rate-limit address with X-Forwarded-For (uvicorn believes it from
    127.0.0.1 unless told which proxies to trust)."""
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log",
                           env={"LIVEREC_RATE_READ_BURST": "3",
                                "LIVEREC_RATE_READ_PER_S": "0.001"})
    try:
        server.wait_listening()
        wait_for(lambda: httpx.get(f"{server.base}/healthz").status_code == 200, 30, "up")
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n"
        many = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n")
        for request in (huge, many):
            status, headers, body = _raw(server.port, request)
            assert status == 431, (status, body[:200])
            assert orjson.loads(body)["detail"]["reason"] == "headers_too_large"
            assert len(headers["x-request-id"]) == 32  # as every answer has one
        # A 60 KiB header that arrives in one read (no read ends inside the head) is
        # measured when the head completes.
        whole = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: "
                 + b"a" * 60_000 + b"\r\n\r\n")
        status, _, body = _raw(server.port, whole)
        assert status == 431, (status, body[:200])
        # A request whose head begins in the same read as an earlier request's body is
        # not charged with that body's bytes.
        pad = b" " * 60_000 + orjson.dumps({"user_id": "u", "item_id": "i",
                                            "event_type": "click",
                                            "timestamp": 1_700_000_000})
        post = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(pad)
                + pad)
        get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(post + get[:20])
            time.sleep(0.3)
            s.sendall(get[20:])
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
        assert statuses == [503, 200], data[:600]
        # 20 KiB of headers, under the 32 KiB bound: answered.
        fine = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: "
                + b"a" * 20_000 + b"\r\n\r\n")
        assert _raw(server.port, fine)[0] == 200
        # A 60 KiB body sent with its head in one packet is no head bytes.
        body = b" " * 50_000 + orjson.dumps({"user_id": "u", "item_id": "i",
                                             "event_type": "click",
                                             "timestamp": 1_700_000_000})
        assert 50_000 < len(body) < 64 * 1024
        post = (b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body)
        status, _, answer = _raw(server.port, post)
        assert status == 503 and b"no_producer" in answer, (status, answer[:200])

        statuses = [httpx.get(f"{server.base}/v1/users/u",
                              headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
                    for i in range(5)]
        assert statuses == [200, 200, 200, 429, 429], statuses
        text = httpx.get(f"{server.base}/metrics").text
        assert 'method="GET",route="unmatched",status="431"} 3.0' in text, text
    finally:
        server.stop()


def test_a_slow_or_silent_connection_is_not_held_open(tmp_path: Path) -> None:
    """uvicorn waited for ever on a connection that sent half a request head, or
    nothing, or half a body: a few thousand of them (slowloris) held the server's file
    descriptors."""
    write_snapshot(tmp_path / "snaps")
    server = ServerProcess(tmp_path / "snaps", tmp_path / "serve.log",
                           env={"LIVEREC_HEAD_TIMEOUT_S": "1.5",
                                "LIVEREC_BODY_TIMEOUT_S": "1.5"})
    try:
        server.wait_listening()
        # A body that stops halfway: 408 and the connection closes (it held the
        # connection and its request task for ever).
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        stalled.sendall(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                        b'{"user_id": ')
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        half = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ")
        # A head that comes in pieces within the limit is answered as ever.
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.5)
        slow.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert silent.recv(65536) == b""  # closed, nothing said
        data = b""
        while chunk := half.recv(65536):
            data += chunk
        assert time.monotonic() - t0 < 5
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data[:200]
        assert orjson.loads(body)["detail"]["reason"] == "head_timeout"
        data = b""
        while chunk := stalled.recv(65536):  # ends: the server closes the connection
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data[:200]
        assert orjson.loads(body)["reason"] == "body_timeout"
        for s in (silent, half, slow, stalled):
            s.close()
        metrics = httpx.get(f"{server.base}/metrics").text
        assert re.search(r'liverec_serving_responses_total\{method="GET",route="unmatched",'
                         r'status="408"\} 1\.0', metrics), metrics[-2000:]
        assert 'liverec_serving_ingested_events_total{outcome="body_timeout"} 1.0' in metrics
    finally:
        server.stop()
