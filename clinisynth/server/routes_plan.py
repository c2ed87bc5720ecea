"""``/api/health`` and ``/api/plan``: what a description becomes, and the adapter a run of it would use."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from clinisynth.server.deps import caller
from clinisynth.server.errors import ApiError
from clinisynth.server.schemas import PlanRequest

router = APIRouter(prefix="/api", dependencies=[Depends(caller)])


@router.get("/health")
def health(request: Request) -> dict:
    """Ready to serve: the planner is loaded."""
    state = request.app.state
    return {"status": "ok", "profile": state.jobs.profile or state.settings.profile, "out": str(state.jobs.out)}


@router.post("/plan")
def plan(body: PlanRequest, request: Request) -> dict:
    """The plan of ``text`` (``clinisynth plan --json``) and ``adapter``: the adapters a run of it would use."""
    from clinisynth import api
    from clinisynth.generation.adapters import AdapterRequest
    from clinisynth.models import ADAPTERS_DIR

    settings = request.app.state.settings
    if len(body.text) > settings.max_request_chars:
        raise ApiError(422, f"text is {len(body.text)} characters, over the limit of {settings.max_request_chars}; "
                            "shorten the description", field="text")
    planner = api.get_planner(settings)
    result = planner.check_drawable(planner.plan(body.text))
    directory = settings.adapters_dir
    requested = AdapterRequest(body.adapters, directory=directory if directory is not None else ADAPTERS_DIR,
                               directory_given=directory is not None)
    choice = requested.choose(modality=result.modality.id, label=result.label)
    return {**result.model_dump(mode="json"),
            "adapter": {"mode": choice.mode, "reason": choice.reason,
                        "chosen": [{"name": card.name, "weight": weight} for card, weight in choice.entries]}}
