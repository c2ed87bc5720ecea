"""Distributed training step and batch-generation split on two CPU processes (gloo), as PITFALLS.md prescribes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from clinisynth.generation import tiny

pytestmark = pytest.mark.slow
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"


def _free_port() -> int:
    import socket

    # torchrun's --master_port 0 does not pick a free port for static rendezvous (the workers hang).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed next to this python")
    cache = tmp_path_factory.mktemp("cache")
    tiny.ensure_tiny_pipeline(cache)  # built once here, not raced by the two workers
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(WORKER), str(cache), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)], cache, out


def test_two_processes_train_in_step(ranks):
    records, _, _ = ranks
    assert [r["world"] for r in records] == [2, 2] and records[0]["ranks_seen"] == [0, 1]
    for record in records:
        assert record["steps"] == 2
        assert record["lora_after"] != record["lora_before"]  # the optimizer moved the LoRA weights
    # Each rank drew other images, yet the all-reduced gradients keep the weights identical on both.
    assert records[0]["lora_after"] == pytest.approx(records[1]["lora_after"], rel=1e-9)
    # The logged loss is the mean over processes, so both report the same numbers.
    assert records[0]["train_loss"] == records[1]["train_loss"]


def test_generation_split_is_complete_and_without_duplicates(ranks):
    import numpy as np
    from PIL import Image

    records, cache, out = ranks
    all_ids = [f"normal-{i:06d}-s{seed}" for i, seed in enumerate([5, 6, 7, 8, 9])]
    # accelerate's padded split repeats the last job (5 jobs, 2 processes -> 3 + 3) ...
    given = records[0]["given"] + records[1]["given"]
    assert len(given) == 6 and given.count(all_ids[-1]) == 2
    # ... the assignment keeps one owner per id: a partition of the jobs.
    mine = [set(r["mine"]) for r in records]
    assert mine[0].isdisjoint(mine[1]) and mine[0] | mine[1] == set(all_ids)
    images = records[0]["images"]
    assert list(images) == all_ids and records[1]["images"] == {}
    # An image made on rank 1 equals the same seed sampled alone in this process.
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    generator = Generator.from_profile(resolve_profile("tiny", cache_dir=cache), device="cpu")
    job_id = sorted(mine[1])[0]
    seed = int(job_id.rsplit("-s", 1)[1])
    alone = generator.generate(prompt="chest radiograph", negative_prompt="", seeds=[seed], steps=2, guidance=2.0)[0]
    with Image.open(out / "images" / f"{job_id}.png") as image:
        assert hashlib.sha256(image.tobytes()).hexdigest() == images[job_id]
        remote = np.asarray(image, dtype=np.int16)
    # Same seed, same picture; other thread counts may move a pixel value by a rounding step.
    assert np.abs(np.asarray(alone.image, dtype=np.int16) - remote).max() <= 2


def test_make_jobs_refuses_repeated_seeds():
    from clinisynth.training.distributed import make_jobs

    with pytest.raises(ValueError, match="repeated"):
        make_jobs(prompt="x", negative_prompt="", seeds=[1, 2, 1])
