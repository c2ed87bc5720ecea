"""Every bad input the README's "Bad input to the web API" list names: the JSON error and status it gives, nothing
written, the server still serving. A case added to the README without a check here fails, and the reverse."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from _server_helpers import REQUEST, follow, make_app

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_cases() -> list[tuple[str, int]]:
    """``(clause, status)`` of each item of the list under ``### Bad input to the web API``."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Bad input to the web API\n(.*?)(?=^#)", text, flags=re.S | re.M)
    assert section, "README.md has no '### Bad input to the web API' section"
    paragraph = " ".join(section.group(1).split())
    listed = paragraph.split("with nothing written:", 1)[1].split(". The server keeps serving", 1)[0]
    cases = []
    for clause in listed.split(";"):
        match = re.fullmatch(r"\s*(.*?) \((\d{3})[^)]*\)\s*\.?", clause)
        assert match, f"README clause without a status: {clause!r}"
        cases.append((match.group(1), int(match.group(2))))
    return cases


CAMPAIGN = 'profile: tiny\nsteps: 2\nitems:\n  - description: "normal chest radiograph"\n    count: 1\n'


def _job(client, **body):
    return client.post("/api/jobs", json={"text": REQUEST, **body})


# Each check answers the response of one bad request; ``ctx`` has the client, a finished run and its image.
CHECKS = {
    "malformed JSON": lambda ctx: ctx.client.post("/api/jobs", content=b'{"text": "x",',
                                                  headers={"Content-Type": "application/json"}),
    "a body that is not a JSON object": lambda ctx: ctx.client.post("/api/jobs", json=["text"]),
    "an unknown field": lambda ctx: _job(ctx.client, count=3),
    "a missing `text`": lambda ctx: ctx.client.post("/api/jobs", json={"n": 2}),
    "`n` outside 1..64": lambda ctx: _job(ctx.client, n=65),
    "steps outside 1..1000": lambda ctx: _job(ctx.client, steps=0),
    "guidance outside 0..30": lambda ctx: _job(ctx.client, guidance=31),
    "`best_of` outside 1..16": lambda ctx: _job(ctx.client, best_of=17),
    "`max_rounds` outside 1..20": lambda ctx: _job(ctx.client, max_rounds=0),
    "a negative seed": lambda ctx: _job(ctx.client, seed=-1),
    "a description over 4000 characters": lambda ctx: ctx.client.post("/api/plan", json={"text": "effusion " * 500}),
    "an empty description": lambda ctx: _job(ctx.client, text="   "),
    "an adapter given as a path": lambda ctx: _job(ctx.client, adapters=["../../etc:1"]),
    "a campaign that is not YAML or not a mapping": lambda ctx: ctx.client.post(
        "/api/jobs", json={"campaign": "profile: tiny\nitems: [\n"}),
    "a campaign naming an `items_file`": lambda ctx: ctx.client.post(
        "/api/jobs", json={"campaign": "profile: tiny\nitems_file: rows.csv\n"}),
    "a campaign with an unknown key": lambda ctx: ctx.client.post("/api/jobs", json={"campaign": CAMPAIGN + "colour: red\n"}),
    "a campaign job that also sets a run's field": lambda ctx: ctx.client.post("/api/jobs", json={"campaign": CAMPAIGN,
                                                                                                 "n": 3}),
    "a body over 64 KiB": lambda ctx: ctx.client.post("/api/plan", content=b"{" + b" " * 70000 + b"}",
                                                      headers={"Content-Type": "application/json"}),
    "an unknown run id": lambda ctx: ctx.client.get("/api/runs/20261121T000000.000000Z-00000000/trace"),
    "a run id that is not a safe name": lambda ctx: ctx.client.get("/api/runs/..secret/images"),
    "an unknown job id": lambda ctx: ctx.client.post("/api/jobs/nope/cancel"),
    "a path that leaves the output dir": lambda ctx: ctx.client.get("/api/files/..%2F..%2Fetc%2Fpasswd"),
    "a file that is not a PNG": lambda ctx: ctx.client.get("/api/files/metadata.jsonl"),
    "a review decision other than approved or rejected": lambda ctx: ctx.client.post(
        f"/api/runs/{ctx.run_id}/reviews", json={"file_name": ctx.image, "decision": "maybe"}),
    "a review of an image not in the run": lambda ctx: ctx.client.post(
        f"/api/runs/{ctx.run_id}/reviews", json={"file_name": "chest_xray/x/x_000009.png", "decision": "approved"}),
    "a missing or wrong token": lambda ctx: ctx.guarded.get("/api/runs", headers={"Authorization": "Bearer nope"}),
    "a third job of one token while two are queued or running": lambda ctx: ctx.held("limit"),
    "a full queue": lambda ctx: ctx.held("queue"),
}
FIELDS = {"an unknown field": "count", "a missing `text`": "text", "`n` outside 1..64": "n", "steps outside 1..1000":
          "steps", "guidance outside 0..30": "guidance", "`best_of` outside 1..16": "best_of",
          "`max_rounds` outside 1..20": "max_rounds", "a negative seed": "seed", "an empty description": "text",
          "a description over 4000 characters": "text", "an adapter given as a path": "adapters",
          "a path that leaves the output dir": "path", "a missing or wrong token": "authorization",
          "a review decision other than approved or rejected": "decision", "malformed JSON": "body",
          "a campaign that is not YAML or not a mapping": "campaign", "a campaign naming an `items_file`": "campaign",
          "a campaign with an unknown key": "campaign", "a campaign job that also sets a run's field": "n"}


class Context:
    def __init__(self, client, guarded, run_id, image, out, cache_dir, monkeypatch):
        self.client, self.guarded, self.run_id, self.image = client, guarded, run_id, image
        self.out, self.cache_dir, self.monkeypatch = out, cache_dir, monkeypatch

    def held(self, limit: str):
        """The answer to one job too many, while the worker holds the first (a stand-in run that waits)."""
        from clinisynth import api
        from clinisynth.agents.planner import PlanError

        entered, release = threading.Event(), threading.Event()

        def held(*args, **kwargs):
            entered.set()
            release.wait(timeout=60)
            raise PlanError("released")

        self.monkeypatch.setattr(api, "generate", held)
        queue_size, per_token = (8, 2) if limit == "limit" else (1, 8)
        app = make_app(self.out, self.cache_dir, warm=False, queue_size=queue_size, max_running_per_token=per_token)
        with TestClient(app) as client:
            first = _job(client).json()["id"]
            assert entered.wait(timeout=60)
            assert _job(client).status_code == 202
            answer = _job(client)
            release.set()
            for job in app.state.jobs.list():
                follow(client, job["id"])
        self.monkeypatch.undo()
        return answer


@pytest.fixture(scope="module")
def served(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("bad-input") / "out"
    with TestClient(make_app(out, cache_dir)) as client, TestClient(make_app(out, cache_dir, token="t0ken",
                                                                             warm=False)) as guarded:
        job = _job(client, n=1).json()
        follow(client, job["id"])
        image = client.get(f"/api/jobs/{job['id']}").json()["stored"][0]
        yield client, guarded, job["run_id"], image, out


def _snapshot(out: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}


def test_the_readme_lists_exactly_the_checked_cases():
    assert [clause for clause, _ in readme_cases()] == list(CHECKS)


@pytest.mark.parametrize(("clause", "status"), readme_cases(), ids=[clause for clause, _ in readme_cases()])
def test_bad_input_is_one_json_error_and_writes_nothing(clause, status, served, cache_dir, monkeypatch):
    client, guarded, run_id, image, out = served
    before = _snapshot(out)
    answer = CHECKS[clause](Context(client, guarded, run_id, image, out, cache_dir, monkeypatch))
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "field"} and body["error"] and "Traceback" not in body["error"]
    if clause in FIELDS:
        assert body["field"] == FIELDS[clause], body
    if status not in (429, 503):  # those two ran a stand-in job (its trace was never written, nothing stored)
        assert _snapshot(out) == before
    assert client.get("/api/health").status_code == 200
