"""Campaign jobs over the API (tiny profile): the campaign file's text in, one ordered dataset out, Cancel, resume.
Their bad input is in test_server_bad_input.py, with the README's list."""

from __future__ import annotations

from _server_helpers import cancel_on, follow
from test_server import client, out  # noqa: F401 - the same fixtures: a tiny-profile app on a fresh output dir

CAMPAIGN = """profile: tiny
seed: 7
steps: 2
chunk_size: 2
items:
  - description: "right lower lobe pneumonia, PA chest radiograph"
    count: 3
  - description: "normal chest radiograph"
    count: 2
"""


def _campaign(client, text: str = CAMPAIGN) -> tuple[dict, list]:
    submitted = client.post("/api/jobs", json={"campaign": text})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["run_id"] is None
    events = follow(client, submitted.json()["id"])
    return client.get(f"/api/jobs/{submitted.json()['id']}").json(), events


def test_a_campaign_job_fills_the_dataset_and_its_runs_are_listed(client, out):
    from clinisynth.generation.storage import OrderedStorage

    job, events = _campaign(client)
    assert job["kind"] == "campaign" and job["status"] == "complete", job
    assert job["progress"]["counts"]["stored"] == 5 and len(job["stored"]) == 5
    assert all((out / name).is_file() for name in job["stored"])
    rows = OrderedStorage(out).read_metadata()
    assert sorted(row["file_name"] for row in rows) == sorted(job["stored"])
    labels = sorted(row["label"] for row in rows)
    assert labels == ["normal", "normal", "pneumonia", "pneumonia", "pneumonia"]
    run_ids = [data["run_id"] for name, data in events if name == "run"]
    assert len(run_ids) == 3  # chunks of 2: pneumonia 2 + 1, normal 2
    listed = {run["run_id"] for run in client.get("/api/runs").json()}
    assert set(run_ids) <= listed
    assert (out / "campaign" / "report.md").is_file()


def test_a_cancelled_campaign_keeps_its_images_and_the_same_campaign_resumes_it(client, out, monkeypatch):
    cancel_on(monkeypatch, event="slot")  # asked as the first image of the campaign is filed
    first, _ = _campaign(client)
    assert first["status"] == "cancelled" and 1 <= len(first["stored"]) < 5, first
    kept = list(first["stored"])
    monkeypatch.undo()
    second, events = _campaign(client)
    assert second["status"] == "complete" and len(second["stored"]) == 5
    assert set(kept) <= set(second["stored"])  # nothing filed before the cancel was redrawn or lost
    assert any(name == "run" and data["resume"] for name, data in events)  # the stopped run was continued
