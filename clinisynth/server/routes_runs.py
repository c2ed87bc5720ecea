"""``/api/runs`` (every run in the output dir, also those of earlier servers), traces, images, reviews, export."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from clinisynth.server.deps import caller, jobs
from clinisynth.server.errors import ApiError
from clinisynth.server.reviews import approved_zip, read_reviews, record_review
from clinisynth.server.schemas import ReviewRequest
from clinisynth.server.security import inside

router = APIRouter(prefix="/api", dependencies=[Depends(caller)])


def _storage(request: Request):
    from clinisynth.generation.storage import OrderedStorage

    return OrderedStorage(request.app.state.jobs.out)


def _trace(request: Request, run_id: str) -> dict:
    from clinisynth.generation.storage import StorageError, check_run_id

    try:
        check_run_id(run_id)
    except StorageError as error:
        raise ApiError(400, str(error), field="run_id") from None
    storage = _storage(request)
    if not storage.trace_path(run_id).is_file():
        raise ApiError(404, f"no run {run_id!r} in the output dir; GET /api/runs lists them", field="run_id")
    return storage.read_trace(run_id)


def _state(trace: dict, active: set[str]) -> str:
    """A run's state; a run this process started but no job of it is running any more was interrupted."""
    from clinisynth.generation.storage import run_state
    from clinisynth.server.jobs import process_is_this_one

    state = run_state(trace)
    if state == "running" and process_is_this_one(trace) and trace.get("run_id") not in active:
        return "interrupted"
    return state


@router.get("/runs")
def runs(request: Request, manager=Depends(jobs)) -> list[dict]:
    """Every run in the output dir, oldest first; killed ones (a server restarted meanwhile) are ``interrupted``
    and, like cancelled and failed ones, ``resumable`` (``POST /api/runs/{run_id}/resume``)."""
    active = manager.active_run_ids()
    storage = _storage(request)
    listed = []
    for summary in storage.list_runs():
        summary.pop("path", None)  # the server's own file system is none of the client's business
        if summary.get("status") == "running" and summary["run_id"] not in active:
            summary["status"] = _state(storage.read_trace(summary["run_id"]), active)
        summary["resumable"] = summary.get("status") in ("interrupted", "cancelled") or (
            summary.get("status") == "failed" and bool(storage.read_trace(summary["run_id"]).get("error")))
        listed.append(summary)
    return listed


@router.get("/runs/{run_id}/trace")
def trace(run_id: str, request: Request, manager=Depends(jobs)) -> dict:
    """The run's trace (``clinisynth trace show --json``), its ``status`` as :func:`runs` reports it."""
    result = _trace(request, run_id)
    result["status"] = _state(result, manager.active_run_ids())
    result.pop("process", None)
    return result


@router.get("/runs/{run_id}/images")
def images(run_id: str, request: Request) -> list[dict]:
    """The run's stored images in the order filed: ``file_name``, ``url``, ``scores``, ``review``, ..."""
    _trace(request, run_id)
    rows = [row for row in _storage(request).read_metadata() if row.get("run_id") == run_id]
    return [{**row, "url": f"/api/files/{row['file_name']}"} for row in rows]


@router.post("/runs/{run_id}/resume", status_code=202)
def resume(run_id: str, request: Request, owner: str = Depends(caller), manager=Depends(jobs)) -> dict:
    """Queue a job that continues the interrupted, cancelled or failed run from its checkpoint."""
    from clinisynth.agents.runner import resumable_run

    _trace(request, run_id)
    resumable_run(_storage(request), run_id)  # finished runs are refused here, before a job exists
    job = manager.submit(owner=owner, options={"resume": run_id})
    return {"id": job.id, "run_id": job.run_id, "status": job.status}


@router.get("/runs/{run_id}/reviews")
def reviews(run_id: str, request: Request) -> list[dict]:
    """Every decision on the run's images, oldest first (the latest per image is in its metadata row)."""
    _trace(request, run_id)
    return [review for review in read_reviews(_storage(request)) if review.get("run_id") == run_id]


@router.post("/runs/{run_id}/reviews", status_code=201)
def review(run_id: str, body: ReviewRequest, request: Request) -> dict:
    """Approve or reject one stored image of the run, with a comment."""
    _trace(request, run_id)
    return record_review(_storage(request), run_id=run_id, file_name=body.file_name, decision=body.decision,
                         comment=body.comment, reviewer=body.reviewer)


@router.get("/export")
def export(request: Request, run_id: str | None = None) -> Response:
    """The approved images (of ``run_id``, else of every run) as an imagefolder zip with their metadata.jsonl."""
    if run_id is not None:
        _trace(request, run_id)
    data, count = approved_zip(_storage(request), run_id=run_id)
    name = f"approved-{run_id or 'all'}.zip"
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Image-Count": str(count)})


@router.get("/files/{path:path}")
def files(path: str, request: Request) -> FileResponse:
    """A PNG of the output dir (stored images, candidates, contact sheets); nothing outside it, nothing else."""
    target = inside(request.app.state.jobs.out, path, what="image")
    if target.suffix.lower() != ".png":
        raise ApiError(400, f"{path!r} is not an image; only the output dir's PNG files are served", field="path")
    return FileResponse(target, media_type="image/png")
