"""Run seeds: which seeds a run draws, and base seeds that never collide with the runs already in a dataset.

A run with base seed ``b`` draws, for slot ``s``, round ``r`` (from 1) and best-of candidate ``c``, the seed
:func:`attempt_seed` ``= b + s + (r - 1) * ROUND_SEED_STRIDE + c * CANDIDATE_SEED_STRIDE``. Its *footprint*
is every seed it may draw, given its ``n`` slots, ``max_rounds`` and ``best_of``. Two footprints collide when they
share a seed; :func:`collides` decides that exactly from the five numbers of each, without listing the seeds.

The dataset keeps one reservation per run (``OrderedStorage.reserve_seeds``, under the dataset lock). A run
given no seed draws a fresh random base that collides with none (:func:`fresh_base`); a run given ``--seed S``
takes the first base from ``S`` up that collides with none (:func:`first_free_base`): ``S`` itself in a fresh
dataset (so an explicit seed stays deterministic), the next unused slots when earlier runs already drew from
``S`` (repeating ``-n 2 --seed 0`` draws what one ``-n 4 --seed 0`` would have, never the stored images again).
Standard library only.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Iterable

#: Seeds of later rounds move by a large prime so that no slot ever reuses another slot's seed.
ROUND_SEED_STRIDE = 1_000_003
#: Best-of-N candidates move by a larger prime than all rounds together (20 x ROUND_SEED_STRIDE).
CANDIDATE_SEED_STRIDE = 50_000_017
#: Fresh base seeds are drawn below this (the campaign seeds' ceiling too), far from ``MAX_SEED``.
FRESH_SEED_LIMIT = 2**40


def attempt_seed(*, base: int, slot: int, round_number: int, candidate: int) -> int:
    """The seed of one candidate: distinct for every (slot, round, candidate) of a run."""
    return base + slot + (round_number - 1) * ROUND_SEED_STRIDE + candidate * CANDIDATE_SEED_STRIDE


@dataclass(frozen=True)
class Footprint:
    """The seeds one run may draw.

    Args:
        base: the run's base seed.
        n: its slots (images asked for); a single seed stored by an older run is ``n=1, rounds=1, best_of=1``.
        rounds: its ``max_rounds``.
        best_of: its candidates per slot and round.
    """

    base: int
    n: int
    rounds: int = 1
    best_of: int = 1


def collides(first: Footprint, second: Footprint) -> bool:
    """Whether the two runs may draw one same seed.

    A seed is ``base + slot + round * R + candidate * C``: the runs share one when, for some round difference
    ``dr`` and candidate difference ``dc`` both can make, ``second.base - first.base - dr * R - dc * C`` is a
    slot difference, i.e. lies in ``(-second.n, first.n)``.
    """
    gap = second.base - first.base
    for dr in range(-(second.rounds - 1), first.rounds):
        for dc in range(-(second.best_of - 1), first.best_of):
            if -second.n < gap - dr * ROUND_SEED_STRIDE - dc * CANDIDATE_SEED_STRIDE < first.n:
                return True
    return False


def _clearing_base(taken: Footprint, wanted: Footprint) -> int | None:
    """The smallest base above ``wanted.base`` that clears the first collision of ``wanted`` with ``taken``."""
    gap = wanted.base - taken.base
    for dr in range(-(wanted.rounds - 1), taken.rounds):
        for dc in range(-(wanted.best_of - 1), taken.best_of):
            offset = dr * ROUND_SEED_STRIDE + dc * CANDIDATE_SEED_STRIDE
            if -wanted.n < gap - offset < taken.n:
                return taken.base + offset + taken.n
    return None


def first_free_base(wanted: Footprint, taken: Iterable[Footprint]) -> int:
    """The smallest base from ``wanted.base`` up whose footprint collides with none of ``taken``.

    Each collision moves the base just past it, and the base only grows, so this ends after at most one move per
    seed family of ``taken``.
    """
    taken = list(taken)
    base = wanted.base
    moved = True
    while moved:
        moved = False
        for other in taken:
            clear = _clearing_base(other, Footprint(base, wanted.n, wanted.rounds, wanted.best_of))
            if clear is not None:
                base, moved = clear, True
    return base


def fresh_base(wanted: Footprint, taken: Iterable[Footprint], *, attempts: int = 64) -> int:
    """A random base below :data:`FRESH_SEED_LIMIT` whose footprint collides with none of ``taken``.

    Raises:
        RuntimeError: ``attempts`` draws in a row collided (a dataset holding near 2**40 seeds).
    """
    taken = list(taken)
    for _ in range(attempts):
        base = secrets.randbelow(FRESH_SEED_LIMIT)
        candidate = Footprint(base, wanted.n, wanted.rounds, wanted.best_of)
        if not any(collides(other, candidate) for other in taken):
            return base
    raise RuntimeError(f"{attempts} random base seeds in a row collide with the dataset's runs")


__all__ = ["CANDIDATE_SEED_STRIDE", "FRESH_SEED_LIMIT", "ROUND_SEED_STRIDE", "Footprint", "attempt_seed",
           "collides", "first_free_base", "fresh_base"]
