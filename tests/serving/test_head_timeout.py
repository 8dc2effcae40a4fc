"""The request-head deadline (``head_timeout_s``) and the connection cap
(``max_connections``) of serving's HTTP protocol against a
real uvicorn: a head still arriving while earlier pipelined requests are answered is
not cut off (uvicorn stops reading meanwhile), one that stalls on its own is."""

from __future__ import annotations

import asyncio
import socket
import time

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from serving.protocol import json_error_protocol
from tests.serving.threaded import serve_in_thread


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> PlainTextResponse:
        await asyncio.sleep(2.0)
        return PlainTextResponse("slow")

    @app.get("/a")
    async def a() -> PlainTextResponse:
        return PlainTextResponse("a")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_a_pipelined_head_waits_for_the_answers_before_it() -> None:
    port = _free_port()
    protocol = json_error_protocol(8192, head_timeout_s=1.0)
    with serve_in_thread(_app(), port, http=protocol):
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /a HTTP/1.1\r\nHo")
            time.sleep(1.5)  # past the head deadline, while /slow is still running
            s.sendall(b"st: x\r\nConnection: close\r\n\r\n")
            data = _read_all(s)
        assert data.count(b"HTTP/1.1 200") == 3, data
        assert b"408" not in data
        # A head that stalls with nothing before it is cut off at the deadline.
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /a HTTP/1.1\r\nHo")
            data = _read_all(s)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert b'"reason":"head_timeout"' in data and time.monotonic() - t0 < 5


def test_a_connection_past_the_cap_gets_a_json_503_and_the_others_go_on() -> None:
    port = _free_port()
    rejected: list[tuple[str, int]] = []
    protocol = json_error_protocol(8192, max_connections=2, retry_after_s=3,
                                   on_reject=lambda m, s: rejected.append((m, s)))
    with serve_in_thread(_app(), port, http=protocol):
        first = socket.create_connection(("127.0.0.1", port), timeout=15)
        second = socket.create_connection(("127.0.0.1", port), timeout=15)
        time.sleep(0.2)  # both accepted before the third
        with socket.create_connection(("127.0.0.1", port), timeout=15) as third:
            data = _read_all(third)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), data
        assert b"retry-after: 3" in head.lower() and b"content-type: application/json" in head
        assert b'"reason":"too_many_connections"' in body
        assert rejected == [("other", 503)]
        # The two held connections are served as ever ...
        first.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(first).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(0.2)  # the server saw the close
        # ... and a connection is let in again once one has gone.
        with socket.create_connection(("127.0.0.1", port), timeout=15) as fourth:
            fourth.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_all(fourth).startswith(b"HTTP/1.1 200")
        second.close()
