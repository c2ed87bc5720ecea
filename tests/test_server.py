"""The web app's API on the tiny profile: jobs, live events, cancel, restart, reviews, export, security."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import zipfile

import pytest
from fastapi.testclient import TestClient

from _server_helpers import REQUEST, cancel_on, follow, make_app


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture
def client(out, cache_dir):
    with TestClient(make_app(out, cache_dir)) as client:
        yield client


def _run(client, **body) -> tuple[dict, list]:
    submitted = client.post("/api/jobs", json={"text": REQUEST, "n": 2, **body})
    assert submitted.status_code == 202, submitted.text
    events = follow(client, submitted.json()["id"])
    return client.get(f"/api/jobs/{submitted.json()['id']}").json(), events


def test_plan_shows_findings_report_prompt_and_the_adapter_that_will_be_used(client):
    plan = client.post("/api/plan", json={"text": REQUEST}).json()
    effusion = next(f for f in plan["findings"] if f["label"] == "pleural_effusion")
    assert (effusion["status"], effusion["laterality"], effusion["severity"]) == ("present", "right", "moderate")
    assert plan["modality"]["id"] == "modality.chest_xray" and plan["label"] == "pleural_effusion"
    assert set(plan["report"]) == {"history", "technique", "findings", "impression"} and plan["prompt"]
    assert plan["adapter"]["mode"] == "none" and plan["adapter"]["chosen"] == [] and plan["adapter"]["reason"]


def test_a_job_streams_its_events_and_stores_what_the_cli_would(client, out):
    job, events = _run(client)
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "end"
    nodes = [data["node"] for name, data in events if name == "node"]
    assert nodes[:4] == ["localize", "pathology", "visual_map", "prompt"] and nodes[-1] == "store"
    assert any(name == "image" for name in names)
    stored = [data["file_name"] for name, data in events if name == "stored"]
    assert job["status"] == "complete" and job["stored"] == stored and len(stored) == 2
    for name in stored:
        assert (out / name).is_file()
    trace = client.get(f"/api/runs/{job['run_id']}/trace").json()
    assert trace["status"] == "complete" and trace["stored"] == stored and "process" not in trace
    images = client.get(f"/api/runs/{job['run_id']}/images").json()
    assert [image["file_name"] for image in images] == stored and all("scores" in image for image in images)
    picture = client.get(images[0]["url"])
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    listed = {run["run_id"]: run for run in client.get("/api/runs").json()}
    assert listed[job["run_id"]]["status"] == "complete" and not listed[job["run_id"]]["resumable"]
    assert "path" not in listed[job["run_id"]]


def test_cancel_stops_at_the_next_step_and_keeps_every_accepted_image(client, out, monkeypatch):
    cancel_on(monkeypatch, event="stored")  # asked while the verify node files its first image
    job, events = _run(client, n=2)
    assert job["status"] == "cancelled"
    trace = client.get(f"/api/runs/{job['run_id']}/trace").json()
    assert trace["status"] == "cancelled" and trace["cancelled"]["after_node"] == "verify"
    assert [event["node"] for event in trace["events"]][-1] == "verify"  # the store node never ran
    rows = [row["file_name"] for row in client.get(f"/api/runs/{job['run_id']}/images").json()]
    assert rows and rows == trace["stored"] == job["stored"]
    assert all((out / name).is_file() for name in rows)


def test_a_cancelled_run_resumes_to_completion(client, monkeypatch):
    cancel_on(monkeypatch, event="node", node="generate")  # stopped before anything was verified
    job, _ = _run(client)
    assert job["status"] == "cancelled" and job["stored"] == []
    monkeypatch.undo()
    listed = {run["run_id"]: run for run in client.get("/api/runs").json()}
    assert listed[job["run_id"]]["resumable"]
    resumed = client.post(f"/api/runs/{job['run_id']}/resume")
    assert resumed.status_code == 202 and resumed.json()["run_id"] == job["run_id"]
    follow(client, resumed.json()["id"])
    final = client.get(f"/api/jobs/{resumed.json()['id']}").json()
    assert final["status"] == "complete" and len(final["stored"]) == 2
    trace = client.get(f"/api/runs/{job['run_id']}/trace").json()
    assert trace["resumed"][0]["after_status"] == "cancelled" and "cancelled" not in trace
    again = client.post(f"/api/runs/{job['run_id']}/resume")
    assert again.status_code == 422 and "nothing to resume" in again.json()["error"]


def test_a_restarted_server_lists_finished_runs_and_marks_killed_ones_interrupted(out, cache_dir, monkeypatch):
    cancel_on(monkeypatch, event="node", node="generate")
    with TestClient(make_app(out, cache_dir)) as first:
        killed, _ = _run(first)
    monkeypatch.undo()
    with TestClient(make_app(out, cache_dir)) as first:
        finished, _ = _run(first)
    # The first run's server "was killed": its trace says running, by a process that is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    trace_path = out / "runs" / killed["run_id"] / "trace.json"
    trace = json.loads(trace_path.read_text())
    trace.update(status="running", process={"pid": gone.pid, "host": socket.gethostname()})
    trace.pop("cancelled")
    trace_path.write_text(json.dumps(trace))
    with TestClient(make_app(out, cache_dir)) as restarted:
        listed = {run["run_id"]: run for run in restarted.get("/api/runs").json()}
        assert listed[finished["run_id"]]["status"] == "complete" and not listed[finished["run_id"]]["resumable"]
        assert listed[killed["run_id"]]["status"] == "interrupted" and listed[killed["run_id"]]["resumable"]
        assert restarted.get(f"/api/runs/{killed['run_id']}/trace").json()["status"] == "interrupted"
        resumed = restarted.post(f"/api/runs/{killed['run_id']}/resume").json()
        follow(restarted, resumed["id"])
        assert restarted.get(f"/api/jobs/{resumed['id']}").json()["status"] == "complete"


def test_reviews_are_kept_in_the_dataset_and_approved_images_export_as_an_imagefolder(client, out):
    job, _ = _run(client)
    first, second = job["stored"]
    url = f"/api/runs/{job['run_id']}/reviews"
    assert client.post(url, json={"file_name": first, "decision": "rejected", "comment": "blurred"}).status_code == 201
    assert client.post(url, json={"file_name": first, "decision": "approved", "comment": "fine on 2nd look"}).status_code == 201
    assert client.post(url, json={"file_name": second, "decision": "rejected", "comment": "artefact"}).status_code == 201
    log = [json.loads(line) for line in (out / "reviews.jsonl").read_text().splitlines()]
    assert [(r["file_name"], r["decision"]) for r in log] == [(first, "rejected"), (first, "approved"),
                                                              (second, "rejected")]
    rows = {json.loads(line)["file_name"]: json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()}
    assert (rows[first]["review"], rows[first]["review_comment"]) == ("approved", "fine on 2nd look")
    assert rows[second]["review"] == "rejected"
    images = {image["file_name"]: image for image in client.get(f"/api/runs/{job['run_id']}/images").json()}
    assert images[first]["review"] == "approved"  # what a reloaded page shows
    assert len(client.get(url).json()) == 3
    exported = client.get("/api/export", params={"run_id": job["run_id"]})
    assert exported.status_code == 200 and exported.headers["x-image-count"] == "1"
    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    assert sorted(archive.namelist()) == sorted([first, "metadata.jsonl"])
    assert [json.loads(line)["file_name"] for line in archive.read("metadata.jsonl").decode().splitlines()] == [first]
    assert archive.read(first) == (out / first).read_bytes()


def test_a_review_of_an_image_of_another_run_is_refused(client, out):
    job, _ = _run(client, n=1)
    other, _ = _run(client, n=1)
    refused = client.post(f"/api/runs/{job['run_id']}/reviews",
                          json={"file_name": other["stored"][0], "decision": "approved"})
    assert refused.status_code == 404 and refused.json()["field"] == "file_name"
    assert not (out / "reviews.jsonl").exists()


def test_every_route_needs_the_token_when_the_server_has_one(out, cache_dir):
    with TestClient(make_app(out, cache_dir, token="s3cret")) as client:
        for method, path in (("GET", "/api/health"), ("GET", "/api/runs"), ("POST", "/api/plan"),
                             ("POST", "/api/jobs"), ("GET", "/api/jobs/x"), ("GET", "/api/jobs/x/events"),
                             ("POST", "/api/jobs/x/cancel"), ("GET", "/api/runs/x/trace"), ("GET", "/api/files/a.png"),
                             ("GET", "/api/export"), ("GET", "/docs"), ("GET", "/api/openapi.json")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                answer = client.request(method, path, headers=headers)
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json()["field"] == "authorization" and "token" in answer.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/health", headers=good).status_code == 200
        assert client.get("/docs", headers=good).status_code == 200
        assert client.get("/api/openapi.json", headers=good).json()["paths"]["/api/jobs"]
        assert client.get("/generate").status_code == 200  # the page shell holds no data; its calls need the token


def test_the_running_job_limit_per_token_and_the_bounded_queue(out, cache_dir, monkeypatch):
    from clinisynth import api
    from clinisynth.agents.planner import PlanError

    entered, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(timeout=60), "the test never released the job"
        raise PlanError("released by the test")

    monkeypatch.setattr(api, "generate", held)
    app = make_app(out, cache_dir, token="a", queue_size=1, max_running_per_token=1, warm=False)
    with TestClient(app) as client:
        a = {"Authorization": "Bearer a"}
        first = client.post("/api/jobs", json={"text": REQUEST}, headers=a)
        assert first.status_code == 202
        assert entered.wait(timeout=60)
        over = client.post("/api/jobs", json={"text": REQUEST}, headers=a)
        assert over.status_code == 429 and "limit is 1" in over.json()["error"]
        app.state.jobs.max_running_per_token = 5  # now the queue (one place) is the limit
        assert client.post("/api/jobs", json={"text": REQUEST}, headers=a).status_code == 202
        full = client.post("/api/jobs", json={"text": REQUEST}, headers=a)
        assert full.status_code == 503 and "queue is full" in full.json()["error"]
        release.set()
        ended = follow(client, first.json()["id"], headers=a)
        assert ended[-1][1]["status"] == "error" and "released by the test" in ended[-1][1]["error"]


def test_a_queued_job_cancelled_never_starts(out, cache_dir, monkeypatch):
    from clinisynth import api
    from clinisynth.agents.planner import PlanError

    entered, release, calls = threading.Event(), threading.Event(), []

    def held(*args, **kwargs):
        calls.append(kwargs.get("run_id"))
        entered.set()
        release.wait(timeout=60)
        raise PlanError("released")

    monkeypatch.setattr(api, "generate", held)
    with TestClient(make_app(out, cache_dir, warm=False, max_running_per_token=3)) as client:
        first = client.post("/api/jobs", json={"text": REQUEST}).json()
        assert entered.wait(timeout=60)
        queued = client.post("/api/jobs", json={"text": REQUEST}).json()
        assert client.post(f"/api/jobs/{queued['id']}/cancel").json()["cancel_requested"]
        release.set()
        follow(client, first["id"])
        assert follow(client, queued["id"])[-1][1]["status"] == "cancelled"
        assert calls == [first["run_id"]]


@pytest.mark.parametrize("case", ["public host without token", "port in use", "unknown profile", "out is a file"])
def test_serve_refuses_bad_options_with_one_error_line(case, tmp_path):
    from typer.testing import CliRunner

    from clinisynth.cli.main import app

    (tmp_path / "a-file").write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    arguments = {"public host without token": ["--host", "0.0.0.0"],
                 "port in use": ["--port", str(busy.getsockname()[1])],
                 "unknown profile": ["--profile", "huge"],
                 "out is a file": ["--out", str(tmp_path / "a-file")]}[case]
    runner = CliRunner(env={"CLINISYNTH_API_TOKEN": None, "CLINISYNTH_CONFIG": None})
    try:
        result = runner.invoke(app, ["serve", "--out", str(tmp_path / "out"), "--port", "0", *arguments])
    finally:
        busy.close()
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert {"public host without token": "token", "port in use": "cannot listen", "unknown profile": "huge",
            "out is a file": "not a directory"}[case] in result.stderr
    assert not (tmp_path / "out").exists()
