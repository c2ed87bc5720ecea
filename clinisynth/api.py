"""Python API: ``plan`` and ``generate``, built from :class:`~clinisynth.settings.Settings`.

The planner (knowledge, retrieval index, matchers) is built once per process and settings, so
``plan`` on a warm process costs only the reasoning itself.
"""

from __future__ import annotations

import threading
from pathlib import Path

from clinisynth.settings import Settings

_planners: dict[tuple, object] = {}
_lock = threading.Lock()


def quiet_model_loading(*, lazy: bool = False) -> None:
    """Weight-loading progress bars and hub notices are noise for a CLI that prints JSON.

    Args:
        lazy: do not import transformers for this (about 0.5 s): when it is not imported yet, ask for
            the same through the environment variables it and huggingface_hub read at import
            (``TRANSFORMERS_VERBOSITY=error``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``; values already set win),
            so that a model loaded later in this process (the retrieval embedder) loads quietly.
    """
    import sys

    if lazy and "transformers" not in sys.modules:
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "huggingface_hub" in sys.modules:  # too late for its environment variable
            import huggingface_hub

            huggingface_hub.utils.disable_progress_bars()
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def get_planner(settings: Settings | None = None):
    """The process-wide :class:`~clinisynth.agents.planner.Planner` for these settings."""
    settings = settings or Settings()
    key = (settings.knowledge_dir, settings.embedder, settings.cache_dir, settings.retrieval_threshold,
           settings.max_request_chars)
    with _lock:
        if key not in _planners:
            from clinisynth.agents.planner import Planner
            from clinisynth.agents.reasoning.cache import import_nlp_libraries
            from clinisynth.knowledge import DEFAULT_DATA_DIR, load_knowledge
            from clinisynth.retrieval import Retriever

            # Nothing heavy on the way: the embedder (torch) loads at the first description that needs
            # retrieval, and spaCy / medspaCy come without the torch / scipy they would pull in.
            quiet_model_loading(lazy=True)
            import_nlp_libraries()
            knowledge = load_knowledge(settings.knowledge_dir or DEFAULT_DATA_DIR, cache_dir=settings.cache_dir)
            retriever = Retriever.open(knowledge=knowledge, cache_dir=settings.cache_dir, model=settings.embedder)
            _planners[key] = Planner(
                knowledge=knowledge,
                retriever=retriever,
                retrieval_threshold=settings.retrieval_threshold,
                max_request_chars=settings.max_request_chars,
                cache_dir=settings.cache_dir,
            )
        return _planners[key]


def plan(text: str, *, settings: Settings | None = None):
    """Structured plan of a free-text description (the contract of ``clinisynth plan --json``).

    Raises:
        clinisynth.agents.planner.PlanError: empty, over-long, non-UTF-8 or non-medical text, control characters,
            or an uncovered modality.
    """
    from clinisynth.agents.requests import check_request

    settings = settings or Settings()
    check_request(text, max_chars=settings.max_request_chars)  # before the planner is built (seconds)
    return get_planner(settings).plan(text)


def resolve_generator_profile(profile: str, *, settings: Settings | None = None, build: bool = True):
    """The :class:`~clinisynth.generation.profiles.ModelProfile` called ``profile`` (builds the tiny one on first
    use unless ``build`` is false); loads nothing."""
    from clinisynth.generation.profiles import resolve_profile

    settings = settings or Settings()
    return resolve_profile(profile, cache_dir=settings.cache_dir, overrides=settings.profile_overrides(), build=build)


def load_generator(*, profile: str, settings: Settings | None = None):
    """Load the generator of a model profile (builds the tiny one on first use)."""
    from clinisynth.generation.pipeline import Generator

    resolved = resolve_generator_profile(profile, settings=settings)
    quiet_model_loading()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    return Generator.from_profile(resolved), resolved


_generators: dict[tuple, object] = {}
_generator_locks: dict[tuple, threading.RLock] = {}
_generators_lock = threading.Lock()


def _loaded_generator(resolved, *, projection_adapter=None):
    """The process-wide generator of ``resolved`` and the lock a run holds while it uses it.

    Loaded once per process and profile: requests swap their adapters on it in place
    (:meth:`~clinisynth.generation.pipeline.Generator.use_adapters`), never reloading the base models. Only an
    adapter that carries a text projection gets a generator of its own (the projection is part of the model).
    """
    from clinisynth.generation.pipeline import Generator

    key = (resolved.name, resolved.generator, resolved.text_encoder, resolved.tokenizer_source, resolved.resolution,
           resolved.max_length,
           None if projection_adapter is None else (str(projection_adapter.path), projection_adapter.card_sha256))
    with _generators_lock:
        if key not in _generators:
            quiet_model_loading()
            import diffusers

            diffusers.utils.logging.disable_progress_bar()
            adapters = [projection_adapter] if projection_adapter is not None else None
            _generators[key] = Generator.from_profile(resolved, adapters=adapters)
            _generator_locks[key] = threading.RLock()
        return _generators[key], _generator_locks[key]


def generate(
    text: str,
    *,
    out: Path | str,
    n: int = 4,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    max_rounds: int | None = None,
    best_of: int | None = None,
    profile: str | None = None,
    settings: Settings | None = None,
    on_progress=None,
    resume: str | None = None,
    adapters: list | None = None,
    adapters_dir: Path | str | None = None,
    should_stop=None,
    run_id: str | None = None,
):
    """Generate ``n`` verified images of ``text`` into ordered storage under ``out``.

    Everything that can be checked is checked before anything is written: the numbers, the output
    dir, the adapters asked for, the plan, the model profile and the verifier's models. Each accepted
    image is filed as soon as it is verified.

    Args:
        seed: the base seed (slot ``i`` starts at ``seed + i``). ``None``: the run draws a fresh one. Either way the
            seeds are reserved in ``out`` first, so no two runs there draw one seed: a given seed whose seeds earlier
            runs already drew moves to the first unused ones (the trace's ``parameters`` say so).
        adapters: LoRA adapters to draw with, each ``"NAME_OR_PATH[:WEIGHT]"`` or a ``(name_or_path, weight)``
            pair (a name is looked up in ``adapters_dir``). When none are named, the plan's modality and label
            choose one from ``adapters_dir`` (the most specific that fits the base model), or none. The choice
            and its reason go in the trace (``adapters``), each adapter's name, weight and card hash in every
            metadata row.
        adapters_dir: the adapters folder; the setting ``adapters_dir``, else the shipped one, when ``None``.
        run_id: the new run's id (a fresh :func:`~clinisynth.agents.runner.new_run_id` when ``None``), so that a
            caller can follow the run before it starts; not with ``resume``.
        should_stop: a callable asked after every graph step; when it returns true the run stops there with status
            ``cancelled``, keeping every image already filed (the web app's Cancel).
        resume: the id of an interrupted (killed, cancelled or failed) run in ``out`` to continue from its checkpoint,
            with the run's own description, settings and adapters (``text``, when given, must be the run's; the
            other numbers are ignored).

    Returns:
        :class:`clinisynth.agents.runner.RunResult`.
    """
    from clinisynth.agents.requests import PlanError, check_request

    settings = settings or Settings()
    if resume is None:
        check_request(text, max_chars=settings.max_request_chars)  # before the heavy imports below
    from clinisynth.agents.runner import (checkpointed_plan, plan_run, resumable_run, run_generation,
                                          validate_run_arguments)
    from clinisynth.generation.adapters import AdapterError, AdapterRequest, resumed_choice
    from clinisynth.generation.health import check_dataset
    from clinisynth.generation.profiles import PROFILE_NAMES, ProfileError, coverage_problem, generator_record
    from clinisynth.generation.storage import OrderedStorage, check_output_dir, check_run_id
    from clinisynth.models import ADAPTERS_DIR
    from clinisynth.verifier_setup import build_run_verifier, check_verifier_settings

    if run_id is not None:
        if resume is not None:
            raise PlanError("give run_id for a new run or resume for an interrupted one, not both")
        check_run_id(run_id)
    if resume is not None:
        if adapters or adapters_dir is not None:
            raise AdapterError("a resumed run uses the adapters it started with; leave adapters out")
        check_dataset(check_output_dir(out))
        trace = resumable_run(OrderedStorage(check_output_dir(out)), check_run_id(resume))
        if text and text.strip() != trace["request"].strip():
            raise PlanError(f"run {resume} was asked for {trace['request']!r}, not {text!r}; leave the description "
                            "out to resume it")
        text, parameters = trace["request"], trace["parameters"]
        n, seed, steps, guidance = parameters["n_images"], parameters["seed"], parameters["steps"], parameters["guidance"]
        max_rounds, best_of, profile = parameters["max_rounds"], parameters["best_of"], parameters["profile"]
    profile = profile or settings.profile
    max_rounds = settings.max_rounds if max_rounds is None else max_rounds
    best_of = settings.best_of if best_of is None else best_of
    # Cheap checks first: nothing is loaded, built or written before the request is known to be sound.
    if profile not in PROFILE_NAMES:
        raise ProfileError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILE_NAMES)}")
    validate_run_arguments(n_images=n, steps=steps, guidance=guidance, max_rounds=max_rounds,
                           max_images=settings.max_images, best_of=best_of, seed=seed)
    check_dataset(check_output_dir(out))  # a damaged or prepared dataset is refused before any work
    check_verifier_settings(settings)
    if resume is None:
        directory = adapters_dir if adapters_dir is not None else settings.adapters_dir
        requested = AdapterRequest(adapters or [], directory=Path(directory) if directory is not None else ADAPTERS_DIR,
                                   directory_given=directory is not None)
    else:
        choice = resumed_choice(parameters.get("adapters", []), run_id=resume)
    defaults = resolve_generator_profile(profile, settings=settings, build=False)  # builds nothing yet
    steps = steps if steps is not None else defaults.default_steps
    guidance = guidance if guidance is not None else defaults.default_guidance
    planner = get_planner(settings)
    planned = None
    if resume is None:
        # The run's one planning: the graph's reasoning nodes, checkpointed in memory until the first write.
        planned = plan_run(planner=planner, request=text, n_images=n, seed=seed, steps=steps, guidance=guidance,
                           max_rounds=max_rounds, best_of=best_of, run_id=run_id)
        checked = planned.plan
    else:
        checked = checkpointed_plan(OrderedStorage(Path(out)), resume)  # planned when the run started
    modality_id = checked.modality.id
    try:
        resolved = resolve_generator_profile(profile, settings=settings)
        if resume is None:
            requested.check_plan(modality=modality_id, label=checked.label)  # named adapters, before any load
            entries = requested.named
        else:
            entries = choice.entries
        projection = next((card for card, _ in entries if card.projection), None)
        generator, lock = _loaded_generator(resolved, projection_adapter=projection)
        if resume is None:
            choice = requested.choose(modality=modality_id, label=checked.label, problem=generator.adapter_problem)
        if not choice.covers(modality=modality_id, label=checked.label):
            problem = coverage_problem(generator_record(resolved.generator), location=resolved.generator,
                                       modality=planner.knowledge.get(modality_id).label, label=checked.label)
            if problem:
                raise PlanError(problem)
    except BaseException:
        if planned is not None:
            planned.connection.close()
        raise
    with lock:  # one run at a time on a shared generator: its adapters are this run's until it ends
        try:
            generator.use_adapters(choice.entries)  # keys and base model checked before the U-Net changes
            verifier = build_run_verifier(settings=settings, profile=resolved, device=generator.device,
                                          adapters=[card for card, _ in choice.entries],
                                          on_progress=on_progress)
        except BaseException:
            if planned is not None:
                planned.connection.close()
            raise
        return run_generation(
            planner=planner,
            generator=generator,
            storage=OrderedStorage(Path(out)),
            request=text,
            n_images=n,
            seed=seed,
            steps=steps,
            guidance=guidance,
            max_rounds=max_rounds,
            best_of=best_of,
            profile=profile,
            verifier=verifier,
            on_progress=on_progress,
            run_id=resume,
            resume=resume is not None,
            planned=planned,
            adapters=None if resume is not None else choice.record(),
            should_stop=should_stop,
        )
