"""``/api/jobs``: submit, follow (status and SSE), cancel."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from clinisynth.server.deps import caller, jobs
from clinisynth.server.errors import ApiError
from clinisynth.server.jobs import check_campaign_text
from clinisynth.server.schemas import RUN_ONLY_FIELDS, JobRequest

router = APIRouter(prefix="/api/jobs", dependencies=[Depends(caller)])

#: Seconds between keep-alive comments on a quiet event stream (proxies drop silent connections).
KEEPALIVE_S = 15.0


@router.post("", status_code=202)
def submit(body: JobRequest, request: Request, owner: str = Depends(caller), manager=Depends(jobs)) -> dict:
    """Queue a run or a campaign; answers the job's ``id`` and, for a run, the ``run_id`` it will write."""
    if body.campaign is not None:
        for name in RUN_ONLY_FIELDS:
            if name in body.model_fields_set:
                raise ApiError(422, f"{name} is set by the campaign file in a campaign job; leave it out", field=name)
        check_campaign_text(body.campaign)
        job = manager.submit(owner=owner, options={"campaign": body.campaign})
        return {"id": job.id, "run_id": None, "status": job.status}
    if body.text is None:
        raise ApiError(422, "missing field 'text': give text (a run) or campaign (a campaign file's YAML)",
                       field="text")
    settings = request.app.state.settings
    if len(body.text) > settings.max_request_chars:
        raise ApiError(422, f"text is {len(body.text)} characters, over the limit of {settings.max_request_chars}; "
                            "shorten the description", field="text")
    if not body.text.strip():
        raise ApiError(422, "text is empty; describe the image to generate", field="text")
    options = body.model_dump(exclude_none=True)
    options["adapters"] = options.get("adapters") or None
    job = manager.submit(owner=owner, options=options)
    return {"id": job.id, "run_id": job.run_id, "status": job.status}


@router.get("")
def list_jobs(manager=Depends(jobs)) -> list[dict]:
    """This server's jobs, oldest first (finished runs of earlier servers: ``GET /api/runs``)."""
    return manager.list()


@router.get("/{job_id}")
def status(job_id: str, manager=Depends(jobs)) -> dict:
    """``status`` (queued, running, complete, partial, failed, cancelled, error), ``stored``, ``progress``, ..."""
    return manager.get(job_id).summary()


@router.post("/{job_id}/cancel")
def cancel(job_id: str, manager=Depends(jobs)) -> dict:
    """Stop the job after its current graph step; the images it accepted so far stay stored."""
    return manager.cancel(job_id).summary()


@router.get("/{job_id}/events")
async def events(job_id: str, request: Request, manager=Depends(jobs)) -> StreamingResponse:
    """Server-sent events: ``status``, ``node``, ``image``, ``stored``, ``cancel_requested``, then one ``end``.

    Every event since the job was queued is sent first (or since ``Last-Event-ID``), then each as it happens; each
    event's data carries ``time``, the server's UNIX time when it happened.
    """
    job = manager.get(job_id)
    last = request.headers.get("last-event-id", "")
    start = int(last) + 1 if last.isdigit() else 0

    async def stream():
        sent = start
        while True:
            changed = manager.waiter(job)  # taken before reading: a change after the read sets it
            with job.lock:
                pending = job.events[sent:]
                finished = bool(job.events) and job.events[-1]["event"] == "end"  # "end" is the last event
            for event in pending:
                data = json.dumps({**event["data"], "time": event["time"]})
                yield f"id: {event['seq']}\nevent: {event['event']}\ndata: {data}\n\n"
            sent += len(pending)
            if finished:
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
