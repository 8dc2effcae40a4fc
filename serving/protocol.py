"""uvicorn's httptools protocol, answering the requests it cannot parse in JSON.

uvicorn refuses a request it cannot parse (an over-long URL among them, from some
64 KiB on) with a plain-text 400 before the app sees it. :func:`json_error_protocol`
builds a subclass that answers those the way the API answers every other error, counts
them, closes the connection without losing its answer, and answers the requests that
came before the broken one on the same connection first. It also bounds the request
head, which uvicorn's httptools protocol does not: one 100 MiB header was read whole
(hundreds of MB of memory, and its parser's copies grow quadratically), before any
key check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from serving.errors import error_body
from serving.headers import headers_for
from serving.metrics import method_label
from serving.request_id import request_id_of

__all__ = ["json_error_protocol"]

log = logging.getLogger(__name__)


def json_error_protocol(
    max_url_bytes: int, on_reject: Callable[[str, int], None] | None = None,
    max_head_bytes: int = 65_536, max_headers: int = 100, head_timeout_s: float = 30.0,
    max_connections: int | None = None, retry_after_s: int = 1,
) -> type[Any]:
    """uvicorn's httptools protocol answering malformed requests in JSON as well.

    The subclass stops reading a URL at ``max_url_bytes`` and answers JSON 414, a
    request head (request line and headers) over ``max_head_bytes`` or with more than
    ``max_headers`` headers JSON 431, and other parse failures JSON 400. The app never
    sees these requests, so ``on_reject(method, status)`` is told of each answer sent
    (``serving.app.run`` counts them in ``liverec_serving_responses_total`` under the
    route ``unmatched``, with the method as a bounded label, ``other`` when the request
    had none).

    **Slow heads.** A request head must be whole within ``head_timeout_s`` of the
    connection opening or of its first byte: else JSON 408 (reason ``head_timeout``),
    or, when no byte came at all, the connection closes. (uvicorn waited for ever on a
    connection that sent half a head, or nothing: a few thousand such held the
    server's file descriptors.)

    **Too many connections.** With ``max_connections`` set, a connection beyond it
    (counted over the whole server) is answered JSON 503 (reason
    ``too_many_connections``, ``Retry-After: retry_after_s``) and closed at once,
    before anything of it is read. (uvicorn's own ``limit_concurrency`` answers in
    plain text, and only once a request head has been read.) A flood of connections
    still costs a descriptor each while it is accepted and answered: the cap bounds
    the connections served, a proxy in front bounds the flood.

    **Pipelined requests.** A client may send several requests without waiting for
    the answers (HTTP/1.1 pipelining), and a malformed one may follow good ones in
    the same packet. The answers must go out in the order of the requests, so the
    refusal waits until every earlier request on the connection is answered; the
    connection reads nothing more meanwhile. (uvicorn answered at once and closed the
    connection, so the earlier requests' answers were lost, though the app had run
    them and counted them.)

    After the refusal the connection closes *lingering*, as web servers do: the write
    side is shut, what the client still sends is read and dropped until it closes (at
    most ``LINGER_S``). Closing at once, with the rest of a long request unread, makes
    the kernel reset the connection, and a client still sending then loses the answer
    it had been sent.
    """
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        _url_too_long = False
        _head_too_large = False
        _in_head = False  # between a request's first byte and the end of its headers
        _began_in_read = False  # the current head began in the read being parsed
        _head_bytes = 0  # bytes of the reads that fell wholly inside the current head
        _header_bytes = 0  # the current head's complete header fields, as parsed
        _header_count = 0
        _url_seen = False  # the request line got as far as its URL: the method is read
        _draining = False
        #: the refusal (status, reason, message, method) waiting for earlier answers
        _deferred: tuple[int, str, str, str] | None = None
        #: the request whose app task runs (uvicorn keeps only the newest request)
        _running: Any = None
        LINGER_S = 2.0
        _head_timer: Any = None  # the deadline of the head being read (asyncio handle)
        _head_late = False  # the head timed out: the refusal is a 408

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if max_connections is not None \
                    and len(self.server_state.connections) > max_connections:
                # Closed at once, not lingering like the other refusals: nothing was
                # read, and a flood's refused connections lingering 2 s each held
                # thousands of descriptors past the cap.
                self._draining = True
                self._refuse(503, "too_many_connections",
                             f"the server holds its most connections ({max_connections}):"
                             f" retry in {retry_after_s} s", "other",
                             [(b"retry-after", str(retry_after_s).encode())], linger=False)
                return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self._draining or self._deferred is not None:
                return
            if not self._in_head:
                # Nothing of a request arrived: close (a keep-alive wait after an answer
                # is uvicorn's own timer, which this one does not run beside).
                if self.cycle is None:
                    self.transport.close()
                return
            running = self._running
            if self.pipeline or (running is not None and not running.response_complete):
                # Earlier requests of this connection are still being answered (and
                # uvicorn may have paused reading for them): the head's bytes may be
                # waiting unread. Its clock starts again.
                self._arm_head_timer()
                return
            self._head_late = True
            self.send_400_response("request head timed out")

        def data_received(self, data: bytes) -> None:
            if self._draining or self._deferred is not None:
                return  # refused: the rest of the connection's bytes are dropped
            self._began_in_read = False
            super().data_received(data)
            if self._in_head and not self._began_in_read \
                    and not (self._draining or self._deferred is not None):
                # A head still open after a read it did not begin in: the whole read was
                # head. (The read it began in may also hold earlier requests' bytes, and
                # is not counted: a head grows by at most one read past the bound before
                # it is refused; one that completes is measured exactly below.) The
                # parser keeps an unfinished header to itself, so only this bounds it.
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._head_too_large = True
                    self.send_400_response("request head too large")

        def on_message_begin(self) -> None:
            self._arm_head_timer()
            self._url_too_long = self._url_seen = self._head_too_large = False
            self._in_head, self._began_in_read = True, True
            self._head_bytes = self._header_bytes = self._header_count = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
            if self._header_count > max_headers:
                self._head_too_large = True
                raise ValueError("too many headers")  # the parser turns it into a 400 path
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm_head_timer()
            self._in_head = False
            # The request line (method, URL, version) and the header fields.
            if len(self.url) + 32 + self._header_bytes > max_head_bytes:
                self._head_too_large = True
                raise ValueError("request head too large")  # refused before the app runs
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._url_seen = False  # a next request on the connection starts unread
            super().on_message_complete()

        def on_url(self, url: bytes) -> None:
            self._url_seen = True
            super().on_url(url)
            if len(self.url) > max_url_bytes:
                self._url_too_long = True
                raise ValueError("URL too long")  # the parser turns it into a 400 path

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            self._running = cycle
            super()._start_asgi_task(cycle, app)

        def send_400_response(self, msg: str) -> None:
            if self._head_late:
                status, reason = 408, "head_timeout"
                msg = f"the request head must arrive within {head_timeout_s:g} s"
            elif self._url_too_long:
                status, reason = 414, "uri_too_long"
                msg = f"the URL must be at most {max_url_bytes} bytes"
            elif self._head_too_large:
                status, reason = 431, "headers_too_large"
                msg = (f"the request head must be at most {max_head_bytes} bytes, with at "
                       f"most {max_headers} headers")
            else:
                status, reason = 400, "bad_request"
            # httptools reports a method (DELETE) even where none was parsed
            method = "other"
            if self._url_seen:
                with contextlib.suppress(Exception):
                    method = method_label(self.parser.get_method().decode("latin-1"))
            # The request the parser broke off in, when its headers were read: the
            # app may run it (its body broke), or it waits behind earlier ones.
            cycle = self.cycle
            broken = cycle if cycle is not None and cycle.more_body \
                and not cycle.response_complete else None
            if broken is not None and any(c is broken for c, _ in self.pipeline):
                # Never started: this refusal is its only answer.
                self.pipeline.remove(next(p for p in self.pipeline if p[0] is broken))
            running = self._running
            if self.pipeline or (running is not None and running is not broken
                                 and not running.response_complete):
                self._deferred = (status, reason, msg, method)
                self.flow.pause_reading()
                return
            self._refuse(status, reason, msg, method)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            deferred = self._deferred
            if deferred is None or self.pipeline or self.transport.is_closing():
                return  # more answers first (or the connection closed: nothing to send)
            if self._running is not None and not self._running.response_complete:
                return
            self._deferred = None
            if self.timeout_keep_alive_task is not None:
                self.timeout_keep_alive_task.cancel()
                self.timeout_keep_alive_task = None
            self._refuse(*deferred)

        def _refuse(self, status: int, reason: str, msg: str, method: str,
                    extra: list[tuple[bytes, bytes]] | None = None,
                    linger: bool = True) -> None:
            if on_reject is not None and (not self._draining or not linger):
                try:
                    on_reject(method, status)
                except Exception:
                    log.exception("counting a refused request failed")
            body = error_body(reason, msg)
            line = STATUS_LINE.get(status) or f"HTTP/1.1 {status} \r\n".encode()
            head = [line]
            for name, value in [*self.server_state.default_headers,
                                *headers_for("/").items(),  # as the API's own answers
                                *(extra or [])]:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend([
                # a fresh id (the head was not read, or not whole): as every answer has one
                b"x-request-id: " + request_id_of([]).encode() + b"\r\n",
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ])
            self.transport.write(b"".join(head))
            if not linger or self._draining or not self.transport.can_write_eof():
                self.transport.close()
                return
            self._draining = True
            self.flow.resume_reading()  # read and drop what the client still sends
            self.transport.write_eof()
            self.loop.call_later(self.LINGER_S, self.transport.close)

    return JsonErrorHttpToolsProtocol
