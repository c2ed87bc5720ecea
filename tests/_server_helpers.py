"""Shared by the web app's tests: an app on the tiny profile, following a job's events, a cancel trigger."""

from __future__ import annotations

import json
from pathlib import Path

REQUEST = "moderate right pleural effusion, PA chest radiograph"


def make_app(out: Path, cache_dir: Path, **options):
    from clinisynth.server import create_app
    from clinisynth.settings import Settings

    return create_app(out=out, settings=Settings(cache_dir=cache_dir, profile="tiny"), profile="tiny", **options)


def follow(client, job_id: str, headers: dict | None = None) -> list[tuple[str, dict]]:
    """Every event of the job's SSE stream, up to and including ``end`` (the stream closes after it)."""
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers or {}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events and events[-1][0] == "end", events
    return events


def cancel_on(monkeypatch, *, event: str, node: str | None = None) -> None:
    """Make every job ask for its own cancel when it publishes ``event`` (for ``node`` events: of ``node``).

    The request is made from inside the run, so where the run stops does not depend on timing.
    """
    from clinisynth.server.jobs import JobManager

    publish = JobManager._publish

    def publish_then_cancel(self, job, name, data):
        publish(self, job, name, data)
        if name == event and (node is None or data.get("node") == node) and not job.cancel_requested.is_set():
            self.cancel(job.id)

    monkeypatch.setattr(JobManager, "_publish", publish_then_cancel)
