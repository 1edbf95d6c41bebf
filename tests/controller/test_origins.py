"""``controller/origins.py``: the Host allow-list and the cross-site rule, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.origins import allowed_hosts, cross_site_reason
from controller.settings import Settings


def test_allowed_hosts_come_from_the_public_url_the_bind_and_the_setting(tmp_path: Path) -> None:
    plain = allowed_hosts(Settings(data_dir=tmp_path, port=9000))
    assert {"127.0.0.1:9000", "localhost:9000", "[::1]:9000", "localhost"} <= plain
    assert "evil.example" not in plain and "127.0.0.1:9001" not in plain
    proxied = allowed_hosts(
        Settings(
            data_dir=tmp_path, public_url="https://Ctl.Example.org/", allowed_hosts=["Alias.example:8443"]
        )
    )
    assert {"ctl.example.org", "ctl.example.org:443", "alias.example:8443"} <= proxied
    assert "ctl.example.org:80" not in proxied
    bound = allowed_hosts(Settings(data_dir=tmp_path, host="10.1.2.3", port=8000))
    assert "10.1.2.3:8000" in bound
    wildcard = allowed_hosts(Settings(data_dir=tmp_path, host="0.0.0.0", port=8000))
    assert "0.0.0.0:8000" not in wildcard


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # a script (curl): no browser headers at all
        ({"fetch_site": "same-origin"}, False),
        ({"fetch_site": "none"}, False),  # typed in the address bar
        ({"origin": "http://127.0.0.1:8000"}, False),
        ({"origin": "https://ctl.example.org"}, False),  # the public URL, behind a TLS proxy
        ({"fetch_site": "cross-site"}, True),
        ({"fetch_site": "same-site"}, True),
        ({"origin": "http://evil.example"}, True),
        ({"origin": "null"}, True),
        ({"origin": "https://127.0.0.1:8000"}, True),  # another scheme is another origin
    ],
)
def test_a_state_change_must_be_same_origin(headers: dict[str, str], refused: bool) -> None:
    reason = cross_site_reason(
        method="POST",
        scheme="http",
        host="127.0.0.1:8000",
        origin=headers.get("origin"),
        fetch_site=headers.get("fetch_site"),
        public_url="https://ctl.example.org",
    )
    assert (reason is not None) == refused, reason


def test_reads_are_never_refused() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert (
            cross_site_reason(
                method=method,
                scheme="http",
                host="h",
                origin="http://evil",
                fetch_site="cross-site",
                public_url="http://h",
            )
            is None
        )
