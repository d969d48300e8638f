"""How a server address the user typed becomes the URL the client uses."""

from __future__ import annotations

import pytest

from corral.config import server_url
from corral.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1:8751", "http://127.0.0.1:8751"),
        ("server", "http://server:8750"),
        ("[::1]", "http://[::1]:8750"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("https://server:443/", "https://server:443"),
        ("http://server", "http://server"),
    ],
)
def test_host_and_port_without_a_scheme_mean_http(given: str, url: str) -> None:
    assert server_url(given) == url


@pytest.mark.parametrize("given", ["server:http", "server/api", ":8750"])
def test_an_address_that_is_neither_says_what_to_write(given: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        server_url(given)
