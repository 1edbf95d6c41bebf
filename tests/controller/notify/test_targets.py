"""A user's webhook cannot reach the controller's own network; the admin's can (they are trusted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.notify.targets import (
    Destination,
    UnsafeTarget,
    check_run_targets,
    connection_for,
    destinations,
    display,
)
from controller.settings import Settings
from shared.schemas import RunCreate
from shared.schemas.notify import NotifyEvent, NotifyTarget


def spec(*targets: dict[str, object]) -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": "r",
            "training": {"dataset": "d", "tokenizer_name_or_path": "t", "training_steps": 50},
            "resources": {"scheduler": "local", "time_limit": "1m"},
            "policy": {"notify": list(targets)},
        }
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/api/v1/runs/1/cancel",
        "http://localhost/",
        "http://app.localhost/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_internal_addresses_are_refused_at_submit(url: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeTarget, match=r"policy\.notify\[0\]\.url"):
        check_run_targets([NotifyTarget(url=url)], Settings(data_dir=tmp_path))


def test_an_admin_may_allow_a_host(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, notify_allowed_hosts=["127.0.0.1"])
    check_run_targets([NotifyTarget(url="http://127.0.0.1:9/hook")], settings)
    assert connection_for(Destination("http://127.0.0.1:9/hook", trusted=False), settings).url.startswith(
        "http://127.0.0.1:9/"
    )


def test_names_are_resolved_at_delivery_and_the_checked_address_is_used(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    check_run_targets([NotifyTarget(url="http://localhost.example.invalid/")], settings)  # a name: later
    with pytest.raises(UnsafeTarget, match=r"non-public|cannot resolve"):
        connection_for(Destination("http://localhost.example.invalid/", trusted=False), settings)
    # "localhost" resolves to loopback: refused at delivery even if it slipped through as a name
    with pytest.raises(UnsafeTarget, match="non-public"):
        connection_for(Destination("http://localhost/x", trusted=False), settings)


def test_a_public_address_is_pinned_and_keeps_its_name_for_http_and_tls(tmp_path: Path) -> None:
    conn = connection_for(
        Destination("https://93.184.216.34:8443/hook?a=1", trusted=False), Settings(data_dir=tmp_path)
    )
    assert conn.url == "https://93.184.216.34:8443/hook?a=1"
    assert conn.headers == {"Host": "93.184.216.34:8443"} and conn.extensions == {
        "sni_hostname": "93.184.216.34"
    }


def test_admin_webhooks_are_trusted_and_come_first_without_duplicates(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        notify_webhooks=[
            {"url": "http://127.0.0.1:1/ops", "events": ["failed"]},
            {"url": "https://a.example/x"},
        ],
    )
    run = spec({"url": "https://a.example/x"}, {"url": "https://b.example/y", "events": ["completed"]})
    assert destinations(settings, run, NotifyEvent.FAILED) == [
        Destination("http://127.0.0.1:1/ops", trusted=True),
        Destination("https://a.example/x", trusted=True),
    ]
    assert [d.url for d in destinations(settings, run, NotifyEvent.COMPLETED)] == [
        "https://a.example/x",
        "https://b.example/y",
    ]
    assert (
        connection_for(Destination("http://127.0.0.1:1/ops", trusted=True), settings).url
        == "http://127.0.0.1:1/ops"
    )


def test_shown_to_people_without_the_secret_path() -> None:
    assert display("https://hooks.slack.com/services/T0/B0/SECRET") == "https://hooks.slack.com"
