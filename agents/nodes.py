"""The graph's nodes. Each returns a partial update (never a whole state, see PITFALLS.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from langgraph.runtime import Runtime

from clinisynth.agents.context import Services
from clinisynth.agents.plan import Plan
from clinisynth.agents.state import Attempt, GraphState
from clinisynth.agents.tracing import traced

#: Seeds of later rounds move by a large prime so that no slot ever reuses another slot's seed.
ROUND_SEED_STRIDE = 1_000_003


def _dump(value) -> dict:
    return value.model_dump(mode="json")


def _reasoning_types():
    from clinisynth.agents.reasoning import Localization, Pathology

    return Localization, Pathology


@traced("localize", reads=("request",))
def localize(state: GraphState, runtime: Runtime[Services]) -> dict:
    localization = runtime.context.planner.localize(state.request)
    return {"localization": _dump(localization)}


@traced("pathology", reads=("request", "localization"))
def pathology(state: GraphState, runtime: Runtime[Services]) -> dict:
    planner = runtime.context.planner
    Localization, _ = _reasoning_types()
    localization = Localization.model_validate(state.localization)
    result = planner.assess(state.request, localization)
    return {"pathology": _dump(result)}


@traced("visual_map", reads=("pathology",))
def visual_map(state: GraphState, runtime: Runtime[Services]) -> dict:
    planner = runtime.context.planner
    _, Pathology = _reasoning_types()
    result = Pathology.model_validate(state.pathology)
    return {"visual_features": [_dump(feature) for feature in planner.visual_map(result)]}


@traced("prompt", reads=("localization", "pathology", "visual_features"))
def prompt(state: GraphState, runtime: Runtime[Services]) -> dict:
    from clinisynth.agents.plan import VisualFeature

    planner = runtime.context.planner
    Localization, Pathology = _reasoning_types()
    plan = planner.compose(
        state.request,
        Localization.model_validate(state.localization),
        Pathology.model_validate(state.pathology),
        [VisualFeature.model_validate(feature) for feature in state.visual_features],
    )
    return {"plan": _dump(plan)}


def _save_png_atomically(image, path: Path) -> None:
    import io

    from clinisynth.generation.storage import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue())


@traced("generate", reads=("round", "steps", "guidance", "seed"))
def generate(state: GraphState, runtime: Runtime[Services]) -> dict:
    services = runtime.context
    plan = Plan.model_validate(state.plan)
    round_number = state.round + 1
    slots = state.pending_slots()
    seeds = [state.seed + slot + (round_number - 1) * ROUND_SEED_STRIDE for slot in slots]

    def progress(done: int, total: int) -> None:
        services.on_progress("image", {"round": round_number, "done": done, "total": total})

    images = services.generator.generate(
        prompt=plan.prompt,
        negative_prompt=plan.negative_prompt,
        seeds=seeds,
        steps=state.steps,
        guidance=state.guidance,
        callback=progress,
    )
    attempts = list(state.attempts)
    for slot, generated in zip(slots, images):
        path = services.run_dir / "candidates" / f"r{round_number:02d}_slot{slot:04d}_seed{generated.seed}.png"
        _save_png_atomically(generated.image, path)
        attempts.append(
            Attempt(
                slot=slot,
                round=round_number,
                seed=generated.seed,
                steps=state.steps,
                guidance=state.guidance,
                prompt=plan.prompt,
                negative_prompt=plan.negative_prompt,
                path=str(path.relative_to(services.run_dir)),
                elapsed_s=round(generated.elapsed_s, 4),
            ).model_dump(mode="json")
        )
    return {"round": round_number, "attempts": attempts, "status": "generating"}


def _pixel_digest(pixels) -> str:
    return hashlib.sha256(pixels.tobytes()).hexdigest()


@traced("verify", reads=("round",))
def verify(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Accept a candidate only when every available check passes (sanity, not a duplicate)."""
    import numpy as np
    from PIL import Image

    from clinisynth.evaluation.sanity import check_image

    services = runtime.context
    attempts = [dict(a) for a in state.attempts]
    accepted_digests = {a["scores"].get("sha256") for a in attempts if a["verdict"] == "accepted"}
    for attempt in attempts:
        if attempt["verdict"] != "pending":
            continue
        with Image.open(services.run_dir / attempt["path"]) as image:
            pixels = np.asarray(image.convert("L"))
        sanity = check_image(pixels, thresholds=services.sanity_thresholds)
        digest = _pixel_digest(pixels)
        reasons = []
        if not sanity.ok:
            reasons.append(f"sanity:{sanity.reason}")
        if digest in accepted_digests:
            reasons.append("duplicate:identical to an image accepted in this run")
        # Signals without a model are named, never given a made-up value.
        attempt["scores"] = {
            "sanity": {k: float(v) for k, v in sanity.checks.items()},
            "sha256": digest,
            "unavailable": ["clip_score", "classifier", "memorisation"],
        }
        attempt["reasons"] = reasons
        attempt["verdict"] = "rejected" if reasons else "accepted"
        if not reasons:
            accepted_digests.add(digest)
    return {"attempts": attempts}


@traced("refine", reads=("round", "steps", "guidance"))
def refine(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Pick the next round's settings from why this round's candidates failed.

    Poor quality -> new seed and more steps; duplicate -> new seed only (seeds move every round).
    """
    attempts = [dict(a) for a in state.attempts]
    steps = state.steps
    for attempt in attempts:
        if attempt["round"] != state.round or attempt["verdict"] != "rejected":
            continue
        if any(reason.startswith("sanity:") for reason in attempt["reasons"]):
            steps = max(steps, min(1000, int(round(state.steps * 1.5))))
            attempt["action"] = f"new seed, steps {state.steps} -> {steps}"
        else:
            attempt["action"] = "new seed"
    return {"attempts": attempts, "steps": steps}


@traced("store", reads=("round",))
def store(state: GraphState, runtime: Runtime[Services]) -> dict:
    """File the accepted candidates in ordered storage, in slot order; what never passed is only traced."""
    from PIL import Image

    services = runtime.context
    plan = Plan.model_validate(state.plan)
    knowledge = services.planner.knowledge
    modality_label = knowledge.get(plan.modality.id).label
    present_labels = sorted({f.label for f in plan.findings if f.status == "present"})
    stored = list(state.stored)
    accepted = sorted((a for a in state.attempts if a["verdict"] == "accepted"), key=lambda a: a["slot"])
    for attempt in accepted[len(stored):]:
        with Image.open(services.run_dir / attempt["path"]) as image:
            image.load()
            result = services.storage.store(
                image=image,
                modality=modality_label,
                label=plan.label,
                metadata={
                    "prompt": plan.prompt,
                    "negative_prompt": plan.negative_prompt,
                    "request": plan.request,
                    "label": plan.label,
                    "labels": present_labels,
                    "modality": modality_label,
                    "seed": attempt["seed"],
                    "steps": attempt["steps"],
                    "guidance": attempt["guidance"],
                    "adapters": [],
                    **{f"model_{k}": v for k, v in services.generator.model_ids.items()},
                    "scores": {k: v for k, v in attempt["scores"].items() if k != "sha256"},
                    "round": attempt["round"],
                    "run_id": state.run_id,
                    "knowledge_version": plan.knowledge_version,
                },
            )
        stored.append(result.file_name)
    status = "complete" if len(stored) == state.n_images else ("partial" if stored else "failed")
    return {"stored": stored, "status": status}
