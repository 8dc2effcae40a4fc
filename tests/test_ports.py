"""The server's early port check binds as uvicorn (asyncio) will: it refuses a port in
use, and not an address uvicorn could still listen on."""

from __future__ import annotations

import socket

import pytest

from liverec.ports import cannot_listen


def test_a_port_in_use_is_refused_and_ipv6_beside_it_is_not() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cannot_listen("0.0.0.0", port) == "Address already in use"
        assert cannot_listen("127.0.0.1", port) == "Address already in use"
        if not socket.has_ipv6:
            pytest.skip("no IPv6 on this machine")
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 address here ({exc})")
        # IPv6-only, as asyncio binds it: the IPv4 listener is no conflict
        assert cannot_listen("::", port) is None


def test_an_unknown_host_says_why() -> None:
    assert cannot_listen("no-such-host.invalid", 8000) is not None
