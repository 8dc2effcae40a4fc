"""The app's test client, addressed as a caller on this machine addresses the server."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient as _TestClient

__all__ = ["TestClient"]


class TestClient(_TestClient):
    """:class:`fastapi.testclient.TestClient` with ``Host: 127.0.0.1``, not ``testserver``.

    A server on loopback without keys takes anonymous writes only for requests
    addressed to a loopback name (``serving.auth``: the DNS-rebinding guard), as a
    local caller's are.
    """

    def __init__(self, app: Any, base_url: str = "http://127.0.0.1", **kwargs: Any) -> None:
        super().__init__(app, base_url=base_url, **kwargs)
