"""Seeds that never collide: the footprint arithmetic, and reservations under the dataset lock."""

from __future__ import annotations

import json
import multiprocessing
from itertools import product

import pytest

from clinisynth.generation.seeds import (CANDIDATE_SEED_STRIDE, ROUND_SEED_STRIDE, Footprint, attempt_seed, collides,
                                         first_free_base, fresh_base)
from clinisynth.generation.storage import SEEDS_NAME, OrderedStorage, StorageError


def _seeds(footprint: Footprint) -> set[int]:
    return {attempt_seed(base=footprint.base, slot=slot, round_number=round_number, candidate=candidate)
            for slot, round_number, candidate in product(range(footprint.n), range(1, footprint.rounds + 1),
                                                         range(footprint.best_of))}


@pytest.mark.parametrize("first, second", [
    (Footprint(0, 4, 3, 1), Footprint(3, 2, 3, 1)),                        # overlapping slots
    (Footprint(0, 4, 3, 1), Footprint(4, 2, 3, 1)),                        # adjacent: no seed shared
    (Footprint(0, 4, 3, 1), Footprint(ROUND_SEED_STRIDE + 2, 2, 1, 1)),    # hits round 2 of the first
    (Footprint(0, 4, 1, 1), Footprint(ROUND_SEED_STRIDE + 2, 2, 1, 1)),    # the first has no round 2
    (Footprint(5, 3, 2, 2), Footprint(5 + CANDIDATE_SEED_STRIDE - ROUND_SEED_STRIDE, 3, 2, 2)),
    (Footprint(7, 1), Footprint(0, 8, 1, 1)),                              # a single stored seed
    (Footprint(8, 1), Footprint(0, 8, 1, 1)),
])
def test_collides_is_exactly_whether_two_runs_share_a_seed(first, second):
    assert collides(first, second) == bool(_seeds(first) & _seeds(second)) == collides(second, first)


def test_first_free_base_keeps_a_free_seed_and_moves_past_taken_ones():
    assert first_free_base(Footprint(10, 4, 3, 2), []) == 10
    taken = [Footprint(0, 4, 3, 1), Footprint(4, 2, 3, 1)]
    moved = first_free_base(Footprint(0, 2, 3, 1), taken)
    assert moved == 6  # the unused slots after the earlier runs: as one -n 8 run from 0 would draw
    assert not any(_seeds(Footprint(moved, 2, 3, 1)) & _seeds(other) for other in taken)


def test_fresh_bases_avoid_every_taken_footprint(monkeypatch):
    from clinisynth.generation import seeds

    draws = iter([3, 3, 900])
    monkeypatch.setattr(seeds.secrets, "randbelow", lambda limit: next(draws))
    assert fresh_base(Footprint(0, 2, 2, 1), [Footprint(2, 4, 2, 1)]) == 900  # 3 collides, twice


def test_the_seed_rule_of_a_dataset(tmp_path):
    storage = OrderedStorage(tmp_path / "out")
    first = storage.reserve_seeds(run_id="a", seed=0, n_images=2, max_rounds=3, best_of=1)
    assert (first.base, first.requested, first.note) == (0, 0, None)  # a fresh dir: the seed given
    again = storage.reserve_seeds(run_id="b", seed=0, n_images=2, max_rounds=3, best_of=1)
    assert again.base == 2 and "continues with the unused ones from base seed 2" in again.note
    assert storage.reserve_seeds(run_id="a", seed=99, n_images=2, max_rounds=3, best_of=1) == first  # kept
    drawn = storage.reserve_seeds(run_id="c", seed=None, n_images=2, max_rounds=3, best_of=1)
    assert drawn.requested is None and drawn.base not in (0, 1, 2, 3)
    lines = [json.loads(line) for line in (tmp_path / "out" / SEEDS_NAME).read_text().splitlines()]
    assert [(line["run_id"], line["base"]) for line in lines] == [("a", 0), ("b", 2), ("c", drawn.base)]
    assert json.loads((tmp_path / "out" / ".clinisynth_dataset.json").read_text())["kind"] == "generate"


def test_seeds_of_images_stored_before_reservations_count_as_taken(tmp_path):
    from PIL import Image

    storage = OrderedStorage(tmp_path)
    for seed in (0, 1, 2):
        storage.store(image=Image.new("L", (8, 8), seed), modality="chest_xray", label="normal",
                      metadata={"seed": seed, "run_id": "old"})
    assert storage.reserve_seeds(run_id="new", seed=0, n_images=2, max_rounds=1, best_of=1).base == 3


def test_a_damaged_reservation_file_is_one_storage_error(tmp_path):
    storage = OrderedStorage(tmp_path)
    storage.reserve_seeds(run_id="a", seed=0, n_images=1, max_rounds=1, best_of=1)
    with open(tmp_path / SEEDS_NAME, "a") as handle:
        handle.write("not json\n")
    with pytest.raises(StorageError, match="clinisynth doctor"):
        storage.reserve_seeds(run_id="b", seed=0, n_images=1, max_rounds=1, best_of=1)


def _reserve(root: str, index: int, seed, queue) -> None:
    reservation = OrderedStorage(root).reserve_seeds(run_id=f"run{index}", seed=seed, n_images=6, max_rounds=3,
                                                     best_of=2)
    queue.put(reservation.base)


@pytest.mark.parametrize("seed", [0, None])
def test_concurrent_reservations_never_share_a_seed(tmp_path, seed):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_reserve, args=(str(tmp_path), index, seed, queue)) for index in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    bases = [queue.get(timeout=5) for _ in workers]
    seeds = [_seeds(Footprint(base, 6, 3, 2)) for base in bases]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds))  # no seed in two runs
    if seed == 0:
        assert sorted(bases) == [0, 6, 12, 18, 24, 30, 36, 42]  # each continues where the others stopped


def test_a_store_can_be_refused_under_the_lock_after_seeing_what_others_stored(tmp_path):
    from PIL import Image

    mine, theirs = OrderedStorage(tmp_path), OrderedStorage(tmp_path)
    mine.store(image=Image.new("L", (8, 8), 1), modality="chest_xray", label="normal", metadata={"seed": 1})
    assert len(mine.records()) == 1
    theirs.store(image=Image.new("L", (8, 8), 2), modality="chest_xray", label="normal", metadata={"seed": 2})
    seen = []

    def admit(records):
        seen.extend(record["seed"] for record in records)
        return "duplicate of seed 2"

    before = sorted(p.name for p in tmp_path.rglob("*"))
    counters = (tmp_path / ".clinisynth_counters.json").read_bytes()
    assert mine.store(image=Image.new("L", (8, 8), 2), modality="chest_xray", label="normal",
                      metadata={"seed": 3}, admit=admit) is None
    assert seen == [1, 2]  # what the other writer stored since this one last looked
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # refused: nothing written, no number used
    assert (tmp_path / ".clinisynth_counters.json").read_bytes() == counters


def test_the_accept_time_check_refuses_an_image_another_process_stored_meanwhile(tmp_path):
    import numpy as np
    from PIL import Image

    from clinisynth.agents.context import Services
    from clinisynth.agents.nodes import _AdmitCheck, _stored_embeddings
    from clinisynth.agents.verifier import Verifier

    pixels = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels, "L")
    services = Services(planner=None, storage=OrderedStorage(tmp_path), verifier=Verifier())
    assert len(_stored_embeddings(services, "chest_xray", run_id="mine")) == 0  # the run starts: nothing stored
    OrderedStorage(tmp_path).store(image=image, modality="chest_xray", label="normal",
                                   metadata={"seed": 5, "run_id": "theirs"})  # another process accepts a copy
    check = _AdmitCheck(services, "mine", "chest_xray", services.verifier.embed(image))
    assert services.storage.store(image=image, modality="chest_xray", label="normal",
                                  metadata={"seed": 6, "run_id": "mine"}, admit=check) is None
    assert check.reason.startswith("duplicate: 1.0000 similar to an image another run stored meanwhile")
    other = Image.fromarray(255 - pixels, "L")
    fresh = _AdmitCheck(services, "mine", "chest_xray", services.verifier.embed(other))
    assert services.storage.store(image=other, modality="chest_xray", label="normal",
                                  metadata={"seed": 7, "run_id": "mine"}, admit=fresh) is not None
