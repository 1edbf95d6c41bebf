"""``GET/DELETE /api/v1/runs/{id}/exclusions``: the list as the reconciler left it, cleared by admins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import Api, run_body

from controller.db.models import NodeExclusion
from shared.roles import Role


def _exclude(api: Api, run_id: int, host: str, *, expires_in: float) -> None:
    now = datetime.now(UTC)
    with api.factory() as s:
        s.add(NodeExclusion(run_id=run_id, host=host, reason="node_fail", attempt=1, created_at=now,
                            expires_at=now + timedelta(seconds=expires_in)))  # fmt: skip
        s.commit()


def test_the_list_shows_live_entries_and_an_admin_clears_it(api: Api) -> None:
    run = api.create()
    _exclude(api, run["id"], "vm-2", expires_in=3600)
    _exclude(api, run["id"], "vm-1", expires_in=-1)  # expired: no longer excluded, not listed
    r = api.client.get(f"/api/v1/runs/{run['id']}/exclusions", headers=api.h())
    assert r.status_code == 200
    [entry] = r.json()
    assert entry["host"] == "vm-2" and entry["reason"] == "node_fail" and entry["attempt"] == 1
    assert datetime.fromisoformat(entry["expires_at"]) > datetime.now(UTC)

    r = api.client.delete(f"/api/v1/runs/{run['id']}/exclusions", headers=api.h())
    assert r.status_code == 200 and r.json() == []
    assert api.client.get(f"/api/v1/runs/{run['id']}/exclusions", headers=api.h()).json() == []
    events = api.client.get(f"/api/v1/runs/{run['id']}/events", headers=api.h()).json()["items"]
    [cleared] = [e for e in events if e["kind"] == "exclusions_cleared"]
    assert "vm-1, vm-2" in cleared["message"]


def test_the_owner_reads_but_cannot_clear(api: Api) -> None:
    owner = api.token("olive", role=Role.USER)
    r = api.client.post("/api/v1/runs", json=run_body("owned"), headers=api.h(owner))
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    _exclude(api, run_id, "vm-3", expires_in=3600)
    assert [
        e["host"] for e in api.client.get(f"/api/v1/runs/{run_id}/exclusions", headers=api.h(owner)).json()
    ] == ["vm-3"]
    r = api.client.delete(f"/api/v1/runs/{run_id}/exclusions", headers=api.h(owner))
    assert r.status_code == 403
    assert len(api.client.get(f"/api/v1/runs/{run_id}/exclusions", headers=api.h()).json()) == 1
