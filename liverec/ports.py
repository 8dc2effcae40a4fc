"""Whether a port can be listened on, as uvicorn will bind it: the server's early
check (a clear error before a snapshot loads) and the demo's choice of ports."""

from __future__ import annotations

import errno
import socket

__all__ = ["cannot_listen", "pick_port"]


def cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None.

    Binds every address ``host`` resolves to as asyncio's ``create_server`` (uvicorn's
    bind) does: IPv6 sockets IPv6-only, an address the machine lacks skipped, so
    ``::`` beside a busy ``0.0.0.0`` or ``localhost`` without IPv6 are not refused.

    >>> import socket
    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen()
    ...     cannot_listen("127.0.0.1", s.getsockname()[1])
    'Address already in use'
    >>> cannot_listen("127.0.0.1", 0) is None
    True
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc.strerror or str(exc)
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue
                return exc.strerror or str(exc)
    return None


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it can be listened on, else a free port from the OS.

    >>> 0 < pick_port(8000) < 65536
    True
    """
    if preferred > 0 and cannot_listen(host, preferred) is None:
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
