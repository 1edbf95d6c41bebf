"""``controller/serving.py``: serve flags become Settings keywords, the auth choice, binding port 0,
and the uvicorn configuration every server uses (the end-to-end behaviour is in
tests/security/test_serve.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.serving import HeadTimeoutH11, bind, check_auth_choice, serve_settings, uvicorn_config
from controller.settings import Settings


def test_flags_become_settings_keywords() -> None:
    assert serve_settings(host=None, port=None, data_dir=None, insecure_no_auth=False) == {}
    kwargs = serve_settings(host="127.0.0.1", port=0, data_dir=Path("d"), insecure_no_auth=True)
    assert kwargs == {"host": "127.0.0.1", "port": 0, "data_dir": Path("d"), "auth_required": False}


def test_auth_goes_off_only_by_the_flag_and_on_loopback(tmp_path: Path) -> None:
    check_auth_choice(Settings(data_dir=tmp_path), insecure_no_auth=False)
    check_auth_choice(Settings(data_dir=tmp_path, auth_required=False), insecure_no_auth=True)
    with pytest.raises(ValueError, match="--insecure-no-auth"):
        check_auth_choice(Settings(data_dir=tmp_path, auth_required=False), insecure_no_auth=False)
    with pytest.raises(ValueError, match="loopback"):
        check_auth_choice(
            Settings(data_dir=tmp_path, host="0.0.0.0", auth_required=False), insecure_no_auth=True
        )


def test_bind_port_0_and_the_settings_of_what_was_bound(tmp_path: Path) -> None:
    with bind("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        settings = Settings(data_dir=tmp_path, port=port)
        assert settings.public_url == f"http://127.0.0.1:{port}"
        with pytest.raises(OSError):
            bind("127.0.0.1", port).close()  # taken: refused, not shared


def test_the_uvicorn_config_has_the_head_timeout_and_trusts_no_proxy_by_default(tmp_path: Path) -> None:
    config = uvicorn_config(object(), Settings(data_dir=tmp_path, header_timeout_s=3))
    assert issubclass(config.http, HeadTimeoutH11) and config.http.header_timeout_s == 3
    assert config.proxy_headers is False
    proxied = uvicorn_config(object(), Settings(data_dir=tmp_path, trusted_proxies=["10.0.0.5"]))
    assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == "10.0.0.5"
