"""The drift watch on the real service and real films: pediatric test-dev films raise no alarm; adult NIH
films sent to the pediatric model by name raise one, shown on /api/v1/monitor, as a Prometheus gauge,
in the alarms table and in the log. Needs ../shared (skips without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_fixtures import ROOT, LiveServer

SHARED = ROOT.parent / "shared" / "data"
DEV = SHARED / "kermany-224" / "test-dev"
NIH = SHARED / "nih-cxr14" / "images"
API = "/api/v1"

pytestmark = pytest.mark.skipif(not (DEV.is_dir() and NIH.is_dir()),
                                reason=f"needs Kermany test-dev and NIH films under {SHARED}")


def _send(srv: LiveServer, paths: list[Path]) -> list[str]:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = srv.client.post(f"{API}/studies", files=files)
    assert r.status_code == 201 and not r.json()["errors"], r.text
    ids = [s["id"] for s in r.json()["studies"]]
    for sid in ids:
        assert srv.client.get(f"{API}/studies/{sid}", params={"wait": 60}).json()["status"] == "done"
    return ids


def _model(report: dict) -> dict:
    return next(m for m in report["models"] if m["name"] == "cxr-pneumonia")


def test_in_distribution_films_raise_no_alarm_and_adult_films_raise_one(tmp_path):
    rng = np.random.default_rng(3)
    dev = sorted(DEV.glob("*/*.jpeg"))
    nih = sorted(NIH.glob("*.jpg"))
    srv = LiveServer(tmp_path / "data", args=("--model", "cxr-pneumonia"),
                     env={"CXR_QUEUE_MAX_WAIT_S": "0"}).wait_ready()
    try:
        _send(srv, [dev[i] for i in rng.choice(len(dev), 45, replace=False)])
        m = _model(srv.client.get(f"{API}/monitor").json())
        assert m["reference"]["films"] > 1000 and m["drift"]["films"] == 45
        assert m["drift"]["alarm"] is False and m["drift"]["distance_p"] > 1e-4, m["drift"]
        assert m["histograms"]["score"]["recent_films"] >= 40 and m["days"][0]["scored"] >= 40
        metrics = srv.client.get("/metrics").text
        assert 'cxr_drift_alarm{model="cxr-pneumonia"' in metrics and "} 0.0" in _line(metrics, "cxr_drift_alarm{")

        _send(srv, [nih[i] for i in rng.choice(len(nih), 25, replace=False)])  # adults, to the pediatric model
        report = srv.client.get(f"{API}/monitor").json()
        m = _model(report)
        assert report["alarm"] and m["alarm"] and m["drift"]["alarm"], m["drift"]
        assert any("refusals" in r or "distance" in r for r in m["drift"]["reasons"])
        assert report["alarms"][0]["kind"] == "drift" and report["alarms"][0]["ended_at"] is None
        assert "} 1.0" in _line(srv.client.get("/metrics").text, "cxr_drift_alarm{")
        assert "DRIFT ALARM cxr-pneumonia" in srv.log()
        page = srv.client.get("/monitor")
        assert page.status_code == 200 and "monitor.js" in page.text
    finally:
        srv.stop()


def _line(text: str, prefix: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(prefix))
