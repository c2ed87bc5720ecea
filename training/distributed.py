"""Batch generation split across processes (accelerate): stable job ids, nothing generated twice or lost.

``accelerator.split_between_processes(jobs, apply_padding=True)`` gives every process the same number of jobs by
repeating the last one (PITFALLS.md); the processes agree on one owner per job id before sampling, so a repeated
job is not sampled twice, and the main process checks that every id came back exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationJob:
    """One image to sample.

    Args:
        job_id: stable id (the same jobs list gives the same ids on every process and every run).
        prompt, negative_prompt: texts.
        seed: the image's own seed.
        label: class label (part of the id; where the image is filed).
    """

    job_id: str
    prompt: str
    negative_prompt: str
    seed: int
    label: str = ""


def make_jobs(*, prompt: str, negative_prompt: str, seeds: list[int], label: str = "") -> list[GenerationJob]:
    """One job per seed with ids ``<label>-<position>-s<seed>``; repeated seeds are refused (same image twice)."""
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(f"seeds {repeated} are repeated: each seed gives the same image, pass distinct seeds")
    stem = label or "job"
    return [GenerationJob(job_id=f"{stem}-{i:06d}-s{seed}", prompt=prompt, negative_prompt=negative_prompt,
                          seed=seed, label=label) for i, seed in enumerate(seeds)]


def assign_jobs(jobs: list[GenerationJob], *, accelerator) -> list[GenerationJob]:
    """This process's share of ``jobs``: accelerate's padded split, with every padding copy dropped.

    Every process learns what all processes were given, and a job id belongs to the lowest process index
    holding it, so the union of the shares is ``jobs`` and the shares do not overlap.
    """
    from accelerate.utils import gather_object

    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("job ids must be unique")
    with accelerator.split_between_processes(list(jobs), apply_padding=True) as given:
        given = list(given)
    held = gather_object([(accelerator.process_index, [job.job_id for job in given])])
    owner: dict[str, int] = {}
    for rank, job_ids in sorted(held):
        for job_id in job_ids:
            owner.setdefault(job_id, rank)
    mine, seen = [], set()
    for job in given:
        if owner[job.job_id] == accelerator.process_index and job.job_id not in seen:
            seen.add(job.job_id)
            mine.append(job)
    return mine


def generate_distributed(generator, jobs: list[GenerationJob], *, accelerator, steps: int, guidance: float,
                         batch_size: int = 4) -> dict:
    """Sample ``jobs`` across processes; the main process gets ``{job_id: PIL image}`` for every job, others ``{}``.

    Raises:
        RuntimeError: on the main process, when an id came back twice or not at all.
    """
    import numpy as np
    from accelerate.utils import gather_object
    from PIL import Image

    mine = assign_jobs(jobs, accelerator=accelerator)
    results = []
    # Jobs with the same texts share one encoding and batch; each image still has its own seed.
    groups: dict[tuple[str, str], list[GenerationJob]] = {}
    for job in mine:
        groups.setdefault((job.prompt, job.negative_prompt), []).append(job)
    for (prompt, negative), group in groups.items():
        images = generator.generate(prompt=prompt, negative_prompt=negative, seeds=[j.seed for j in group],
                                    steps=steps, guidance=guidance, batch_size=batch_size)
        results += [(job.job_id, np.asarray(item.image)) for job, item in zip(group, images)]
    gathered = gather_object(results)
    if not accelerator.is_main_process:
        return {}
    collected: dict = {}
    for job_id, array in gathered:
        if job_id in collected:
            raise RuntimeError(f"job {job_id} was generated twice")
        collected[job_id] = Image.fromarray(array)
    lost = [job.job_id for job in jobs if job.job_id not in collected]
    if lost:
        raise RuntimeError(f"{len(lost)} job(s) were not generated: {lost[:5]}")
    return {job.job_id: collected[job.job_id] for job in jobs}
