"""The graph's nodes. Each returns a partial update (never a whole state, see PITFALLS.md)."""

from __future__ import annotations

from pathlib import Path

from langgraph.runtime import Runtime

from clinisynth.agents.context import Services
from clinisynth.agents.plan import Plan
from clinisynth.agents.state import Attempt, GraphState
from clinisynth.agents.tracing import traced
from clinisynth.generation.seeds import CANDIDATE_SEED_STRIDE, ROUND_SEED_STRIDE, attempt_seed  # noqa: F401


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

    from clinisynth.generation.files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue())


@traced("generate", reads=("round", "steps", "guidance", "seed", "best_of", "slot_settings"))
def generate(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Draw ``best_of`` candidates for every unfilled slot, each slot with its own (possibly refined) settings.

    A candidate whose file is already in the run folder (this node was interrupted after saving it, and the
    run resumed) is taken from the file, not drawn again: its seed decides it.
    """
    services = runtime.context
    round_number = state.round + 1
    # Slots that share settings are drawn in one generator call (one batch).
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for slot in state.pending_slots():
        settings = state.settings_for(slot)
        key = (settings.prompt, settings.negative_prompt, settings.steps, settings.guidance)
        groups.setdefault(key, []).extend((slot, candidate) for candidate in range(state.best_of))
    total = sum(len(jobs) for jobs in groups.values())
    attempts = list(state.attempts)
    finished = 0
    for (prompt_text, negative_prompt, steps, guidance), jobs in groups.items():
        paths, elapsed = {}, {}
        for slot, candidate in jobs:
            seed = attempt_seed(base=state.seed, slot=slot, round_number=round_number, candidate=candidate)
            name = f"r{round_number:02d}_slot{slot:04d}_c{candidate:02d}_seed{seed}.png"
            paths[(slot, candidate)] = (seed, services.run_dir / "candidates" / name)
        todo = [job for job in jobs if not paths[job][1].is_file()]
        if todo:
            def progress(done: int, _total: int, already: int = finished + len(jobs) - len(todo)) -> None:
                services.on_progress("image", {"round": round_number, "done": already + done, "total": total})

            images = services.generator.generate(prompt=prompt_text, negative_prompt=negative_prompt,
                                                 seeds=[paths[job][0] for job in todo], steps=steps,
                                                 guidance=guidance, callback=progress)
            for job, generated in zip(todo, images):
                _save_png_atomically(generated.image, paths[job][1])
                elapsed[job] = round(generated.elapsed_s, 4)
        finished += len(jobs)
        for slot, candidate in jobs:
            seed, path = paths[(slot, candidate)]
            attempts.append(
                Attempt(slot=slot, round=round_number, candidate=candidate, seed=seed, steps=steps,
                        guidance=guidance, prompt=prompt_text, negative_prompt=negative_prompt,
                        path=str(path.relative_to(services.run_dir)),
                        elapsed_s=elapsed.get((slot, candidate), 0.0)).model_dump(mode="json")
            )
    return {"round": round_number, "attempts": attempts, "status": "generating"}


def _stored_embeddings(services: Services, modality: str, *, run_id: str, records: list[dict] | None = None):
    """Embeddings of the images filed under ``OUT/<modality>/`` by other runs, kept up to date.

    The first call embeds the files there; each later call embeds only the images other processes stored since
    (their metadata records), so a run sees what concurrent runs accepted. ``records`` are the dataset's records
    when the caller holds them (read under the dataset lock at accept time); read here otherwise.
    This run's own images are left out: they are the accepted attempts, and a resumed verify node must not
    find the image it filed before the interruption a duplicate of itself.
    """
    import numpy as np
    from PIL import Image

    root = Path(services.storage.root)
    if modality not in services.stored_embeddings:
        folder = root / modality
        services.storage.recover()  # a store a kill left half done is finished first: its image is then ours
        records = services.storage.records()
        own = {root / r["file_name"] for r in records if r.get("run_id") == run_id}
        files = sorted(f for f in folder.glob("*/*.png") if f not in own) if folder.is_dir() else []
        services.seen_files.update(files)
        services.seen_files.update(own)
        width = services.verifier.embed(Image.new("L", (8, 8))).shape[0]
        services.stored_embeddings[modality] = np.zeros((0, width), np.float32)
    else:
        files = []
        for record in services.storage.records() if records is None else records:
            path = root / record["file_name"]
            if record.get("modality") == modality and path not in services.seen_files:
                services.seen_files.add(path)
                if record.get("run_id") != run_id and path.is_file():
                    files.append(path)
    if files:
        embeddings = []
        for file in files:
            with Image.open(file) as image:
                embeddings.append(services.verifier.embed(image))
        services.stored_embeddings[modality] = np.concatenate([services.stored_embeddings[modality],
                                                               np.stack(embeddings)])
    return services.stored_embeddings[modality]


def _storage_modality(services: Services, plan: Plan) -> str:
    return services.planner.knowledge.get(plan.modality.id).label


@traced("verify", reads=("round", "best_of"))
def verify(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Score every pending candidate with the verifier; per slot keep the best one that passes every signal.

    Duplicates are checked against the images already in the output dataset (same modality, including what
    other processes stored since the run began) and the candidates accepted earlier in this run. Each slot's
    chosen candidate is filed at once (see :func:`_file`), after a last duplicate check under the dataset lock
    against what other processes stored meanwhile; one refused there is rejected as a duplicate.
    """
    import numpy as np
    from PIL import Image

    from clinisynth.agents.verifier import best_of, thumbnail_data_uri

    services = runtime.context
    verifier = services.verifier
    plan = Plan.model_validate(state.plan)
    modality = _storage_modality(services, plan)
    attempts = [dict(a) for a in state.attempts]
    stored = list(state.stored)
    accepted = [_embedding_of(services, a) for a in attempts if a["verdict"] == "accepted"]
    known = [_stored_embeddings(services, modality, run_id=state.run_id), *(e[None, :] for e in accepted)]
    pending_by_slot: dict[int, list[dict]] = {}
    for attempt in attempts:
        if attempt["verdict"] == "pending":
            pending_by_slot.setdefault(attempt["slot"], []).append(attempt)
    for slot in sorted(pending_by_slot):
        candidates = pending_by_slot[slot]
        verdicts, embeddings = [], []
        for attempt in candidates:
            with Image.open(services.run_dir / attempt["path"]) as image:
                image.load()
                verdict = verifier.verify(image, plan_label=plan.label, modality=modality, prompt=attempt["prompt"],
                                          accepted_embeddings=np.concatenate(known))
                attempt["thumbnail"] = thumbnail_data_uri(image)
            verdicts.append(verdict)
            embeddings.append(verdict.embedding)
            attempt.update(verdict.to_dict(), verdict="accepted" if verdict.accepted else "rejected")
        chosen = best_of(verdicts)
        for index, (attempt, verdict) in enumerate(zip(candidates, verdicts)):
            if verdict.accepted and index != chosen:
                attempt["verdict"] = "passed_not_chosen"
        if chosen is not None:
            # Stored as it passes: an interruption keeps every image accepted so far.
            admit = _AdmitCheck(services, state.run_id, modality, embeddings[chosen])
            stored_as = _file(services, state, plan, candidates[chosen], admit=admit)
            if stored_as is None:
                candidates[chosen].update(verdict="rejected", accepted=False, failure="duplicate",
                                          failures=[*candidates[chosen].get("failures", []), "duplicate"],
                                          reasons=[*candidates[chosen].get("reasons", []), admit.reason])
                continue
            known.append(embeddings[chosen][None, :])
            candidates[chosen]["stored_as"] = stored_as
            stored.append(stored_as)
    return {"attempts": attempts, "stored": stored}


class _AdmitCheck:
    """The last duplicate check of an accepted candidate, run by the store under the dataset lock: against the
    images other processes stored since this run last looked (``OrderedStorage.store(admit=...)``)."""

    def __init__(self, services: Services, run_id: str, modality: str, embedding) -> None:
        self.services, self.run_id, self.modality, self.embedding = services, run_id, modality, embedding
        self.reason: str | None = None

    def __call__(self, records: list[dict]) -> str | None:
        from clinisynth.evaluation.memorisation import max_similarity

        before = len(self.services.stored_embeddings[self.modality])
        known = _stored_embeddings(self.services, self.modality, run_id=self.run_id, records=records)
        if len(known) == before:
            return None
        similarity, row = max_similarity(self.embedding, known[before:])
        limit = self.services.verifier.thresholds_for(self.modality).max_duplicate_similarity
        if row is not None and similarity >= limit:
            self.reason = (f"duplicate: {similarity:.4f} similar to an image another run stored meanwhile "
                           f"(limit {limit})")
        return self.reason


def _embedding_of(services: Services, attempt: dict):
    from PIL import Image

    with Image.open(services.run_dir / attempt["path"]) as image:
        return services.verifier.embed(image)


def _finding_term(plan: Plan) -> str:
    """The requested finding's words, to emphasise after a wrong or weak finding."""
    for finding in plan.findings:
        if finding.status == "present" and finding.label == plan.label:
            return finding.term
    return plan.label.replace("_", " ")


@traced("refine", reads=("round", "slot_settings"))
def refine(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Pick each unfilled slot's next settings from why its candidates failed (issue 6's mapping).

    Wrong or weak finding -> higher guidance, the finding emphasised, the confused class in the negative
    prompt; poor quality -> more steps; memorised or duplicate -> new seed only. Seeds move every round.
    """
    from clinisynth.agents.verifier import Verdict, refinement_for

    plan = Plan.model_validate(state.plan)
    finding = _finding_term(plan)
    attempts = [dict(a) for a in state.attempts]
    slot_settings = dict(state.slot_settings)
    for slot in state.pending_slots():
        failed = [a for a in attempts if a["slot"] == slot and a["round"] == state.round and a["verdict"] == "rejected"]
        if not failed:
            continue
        verdict = Verdict.merged([Verdict.from_dict(a) for a in failed])
        current = state.settings_for(slot)
        refinement = refinement_for(verdict, steps=current.steps, guidance=current.guidance,
                                    negative_prompt=current.negative_prompt, finding=finding, prompt=current.prompt)
        for attempt in failed:
            attempt["action"] = refinement.action
        slot_settings[str(slot)] = {"steps": refinement.steps, "guidance": refinement.guidance,
                                    "prompt": refinement.prompt or current.prompt,
                                    "negative_prompt": refinement.negative_prompt}
    return {"attempts": attempts, "slot_settings": slot_settings}


def _file(services: Services, state: GraphState, plan: Plan, attempt: dict, admit=None) -> str | None:
    """File one accepted candidate in ordered storage (PNG, metadata line, manifest row) and return its name.

    Idempotent per (run, slot): a node that runs again after an interruption gets the image already filed.
    ``admit`` (see ``OrderedStorage.store``) may refuse it under the lock: ``None`` is returned then.
    """
    from PIL import Image

    from clinisynth.agents.verifier import metadata_scores

    modality_label = _storage_modality(services, plan)
    with Image.open(services.run_dir / attempt["path"]) as image:
        image.load()
        result = services.storage.store(
            image=image,
            modality=modality_label,
            label=plan.label,
            metadata={
                "prompt": attempt["prompt"],
                "negative_prompt": attempt["negative_prompt"],
                "request": plan.request,
                "label": plan.label,
                "labels": sorted({f.label for f in plan.findings if f.status == "present"}),
                "modality": modality_label,
                "seed": attempt["seed"],
                "run_seed": state.seed,
                "steps": attempt["steps"],
                "guidance": attempt["guidance"],
                "guidance_interval": list(services.generator.guidance_interval),
                "adapters": list(getattr(services.generator, "adapters", [])),
                **{f"model_{k}": v for k, v in services.generator.model_ids.items()},
                "scores": metadata_scores(attempt["scores"]),
                "round": attempt["round"],
                "slot": attempt["slot"],
                "run_id": state.run_id,
                "knowledge_version": plan.knowledge_version,
            },
            unique={"run_id": state.run_id, "slot": attempt["slot"]},
            admit=admit,
        )
    if result is None:
        return None
    services.on_progress("stored", {"file_name": result.file_name, "slot": attempt["slot"]})
    return result.file_name


@traced("store", reads=("round",))
def store(state: GraphState, runtime: Runtime[Services]) -> dict:
    """Close the run: every accepted candidate is filed by the verify node as it passes; file any that is not
    yet (none in a normal run), then set the status. What never passed is only traced."""
    services = runtime.context
    plan = Plan.model_validate(state.plan)
    attempts = [dict(a) for a in state.attempts]
    stored = list(state.stored)
    for attempt in sorted((a for a in attempts if a["verdict"] == "accepted" and not a.get("stored_as")),
                          key=lambda a: a["slot"]):
        attempt["stored_as"] = _file(services, state, plan, attempt)
        stored.append(attempt["stored_as"])
    status = "complete" if len(stored) == state.n_images else ("partial" if stored else "failed")
    return {"stored": stored, "status": status, "attempts": attempts}
