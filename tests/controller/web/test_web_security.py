"""CSRF double submit, same-origin checks and post-login redirects."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from controller.web.security import CSRF_COOKIE, CsrfError, check_csrf, csrf_token_for, safe_next

TOKEN = "t" * 43


def _request(headers: dict[str, str], scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in ({"host": "127.0.0.1:8000"} | headers).items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": raw,
        "scheme": scheme,
        "server": ("127.0.0.1", 8000),
        "query_string": b"",
    }
    return Request(scope)


def test_matching_cookie_and_header_or_field_pass() -> None:
    check_csrf(_request({"cookie": f"{CSRF_COOKIE}={TOKEN}", "x-csrf-token": TOKEN}), None)
    check_csrf(_request({"cookie": f"{CSRF_COOKIE}={TOKEN}"}), TOKEN)
    same = {
        "cookie": f"{CSRF_COOKIE}={TOKEN}",
        "origin": "http://127.0.0.1:8000",
        "sec-fetch-site": "same-origin",
    }
    check_csrf(_request(same), TOKEN)


@pytest.mark.parametrize(
    "headers,submitted",
    [
        ({}, TOKEN),  # no cookie
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}"}, None),  # nothing submitted
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}"}, "u" * 43),  # wrong value
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}", "origin": "http://evil.example"}, TOKEN),
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}", "origin": "https://127.0.0.1:8000"}, TOKEN),  # scheme differs
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}", "origin": "null"}, TOKEN),
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}", "sec-fetch-site": "cross-site"}, TOKEN),
        ({"cookie": f"{CSRF_COOKIE}={TOKEN}", "sec-fetch-site": "same-site"}, TOKEN),
    ],
)
def test_forgeries_are_refused(headers: dict[str, str], submitted: str | None) -> None:
    with pytest.raises(CsrfError):
        check_csrf(_request(headers), submitted)


def test_a_browser_without_the_cookie_gets_one_stable_new_token() -> None:
    request = _request({})
    first = csrf_token_for(request)
    assert len(first) >= 32 and csrf_token_for(request) == first
    assert csrf_token_for(_request({"cookie": f"{CSRF_COOKIE}={TOKEN}"})) == TOKEN


@pytest.mark.parametrize(
    "target,expected",
    [
        (None, "/"),
        ("", "/"),
        ("/runs/3?x=1", "/runs/3?x=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("runs", "/"),
    ],
)
def test_safe_next_stays_on_this_site(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
