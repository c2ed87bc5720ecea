"""generation/storage.py: ordered, never-overwriting, multi-process-safe storage and run traces."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinisynth.generation.storage import OrderedStorage, StorageError, check_output_dir


def _image(value: int) -> Image.Image:
    pixels = np.full((8, 8), value % 256, dtype=np.uint8)
    pixels[0, 0] = (value * 7) % 256
    return Image.fromarray(pixels, mode="L")


def _store(storage: OrderedStorage, value: int, *, label: str = "pleural_effusion", run_id: str = "run-1"):
    return storage.store(
        image=_image(value),
        modality="chest_xray",
        label=label,
        metadata={"prompt": f"prompt {value}", "seed": value, "steps": 4, "guidance": 3.0, "run_id": run_id,
                  "scores": {"sanity": {"std": 1.5}}, "labels": [label]},
    )


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def test_store_writes_image_metadata_and_manifest(tmp_path):
    root = tmp_path / "out"
    storage = OrderedStorage(root)
    assert not root.exists()  # nothing created before the first store
    stored = _store(storage, 3)
    assert stored.file_name == "chest_xray/pleural_effusion/pleural_effusion_000001.png"
    assert stored.index == 1 and stored.path == root / stored.file_name
    with Image.open(stored.path) as image:
        assert np.array_equal(np.asarray(image), np.asarray(_image(3)))

    (record,) = _metadata(root)
    assert record["file_name"] == stored.file_name
    assert (record["prompt"], record["seed"], record["label"], record["modality"]) == (
        "prompt 3", 3, "pleural_effusion", "chest_xray")
    assert record["scores"] == {"sanity": {"std": 1.5}}

    (row,) = _manifest(root)
    assert row["img_savename"] == stored.file_name
    assert (row["prompt"], row["label"], row["modality"], row["seed"], row["run_id"]) == (
        "prompt 3", "pleural_effusion", "chest_xray", "3", "run-1")
    assert (root / "manifest.csv").read_text().count("img_savename") == 1  # header once


def test_counters_continue_across_instances_and_classes(tmp_path):
    first = OrderedStorage(tmp_path)
    assert [_store(first, i).index for i in range(2)] == [1, 2]
    assert _store(first, 9, label="atelectasis").index == 1  # counters are per class
    second = OrderedStorage(tmp_path)
    assert _store(second, 5).file_name.endswith("pleural_effusion_000003.png")
    assert (tmp_path / "manifest.csv").read_text().count("img_savename") == 1
    assert len(_manifest(tmp_path)) == len(_metadata(tmp_path)) == 4


def test_existing_files_are_never_overwritten(tmp_path):
    class_dir = tmp_path / "chest_xray" / "pleural_effusion"
    class_dir.mkdir(parents=True)
    foreign = class_dir / "pleural_effusion_000005.png"
    _image(200).save(foreign)
    before = foreign.read_bytes()
    stored = _store(OrderedStorage(tmp_path), 1)
    assert stored.index == 6
    assert foreign.read_bytes() == before


def test_a_deleted_images_number_is_not_reused(tmp_path):
    storage = OrderedStorage(tmp_path)
    stored = [_store(storage, i) for i in range(3)]
    stored[-1].path.unlink()
    stored[-2].path.unlink()
    assert _store(OrderedStorage(tmp_path), 10).index == 4


def _worker(root: str, worker: int, count: int, barrier) -> None:
    storage = OrderedStorage(Path(root))
    barrier.wait()  # both processes store at the same time
    for i in range(count):
        _store(storage, worker * 1000 + i, run_id=f"worker-{worker}")


def test_two_processes_storing_at_once_lose_and_duplicate_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=_worker, args=(str(tmp_path), worker, 20, barrier)) for worker in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert len(files) == 40
    assert files[0].endswith("_000001.png") and files[-1].endswith("_000040.png")
    records = _metadata(tmp_path)
    rows = _manifest(tmp_path)
    assert sorted(r["file_name"] for r in records) == files
    assert sorted(r["img_savename"] for r in rows) == files
    # Every image's record is its own: the seed written beside a file is the seed of the pixels in it.
    for record in records:
        with Image.open(tmp_path / record["file_name"]) as image:
            assert np.array_equal(np.asarray(image), np.asarray(_image(record["seed"])))
    assert sorted(r["seed"] for r in records) == sorted(w * 1000 + i for w in (1, 2) for i in range(20))
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_output_dir_checks(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        check_output_dir(a_file)
    with pytest.raises(StorageError, match="is a file"):
        OrderedStorage(a_file / "sub")
    fresh = tmp_path / "new" / "deeper"
    assert check_output_dir(fresh) == fresh
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert os.listdir(tmp_path) == ["taken"]  # and leaves no probe file


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            check_output_dir(locked / "out")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "Pleural Effusion"}, "label"),
        ({"label": "../escape"}, "label"),
        ({"modality": "chest-xray"}, "modality"),
        ({"metadata": {"file_name": "x.png"}}, "file_name"),
        ({"metadata": {"score": float("nan")}}, "JSON"),
        ({"metadata": {"thing": object()}}, "JSON"),
        ({"metadata": {"label": "atelectasis"}}, "differs"),
        ({"image": np.zeros((4, 4))}, "PIL"),
    ],
)
def test_bad_store_requests_write_nothing(tmp_path, kwargs, message):
    request = {"image": _image(1), "modality": "chest_xray", "label": "pleural_effusion", "metadata": {}, **kwargs}
    with pytest.raises(StorageError, match=message):
        OrderedStorage(tmp_path / "out").store(**request)
    assert not (tmp_path / "out").exists()


def test_folder_has_imagefolder_layout(tmp_path):
    storage = OrderedStorage(tmp_path)
    for i in range(3):
        _store(storage, i)
    _store(storage, 7, label="normal")
    records = _metadata(tmp_path)
    images = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    # imagefolder pairs metadata.jsonl rows with images by the relative `file_name`: exactly one row per image.
    assert sorted(r["file_name"] for r in records) == images
    assert all(set(r) >= {"file_name", "prompt", "seed", "label", "modality"} for r in records)
    try:
        import datasets
    except ImportError:
        return  # the layout check above is what datasets relies on; the library itself is optional
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), split="train")
    assert loaded.num_rows == 4 and sorted(loaded["seed"]) == [0, 1, 2, 7]


def test_partial_last_metadata_line_is_repaired(tmp_path):
    storage = OrderedStorage(tmp_path)
    _store(storage, 1)
    with open(tmp_path / "metadata.jsonl", "a") as handle:
        handle.write('{"file_name": "chest_xray/pleural_effusion/pleural_eff')  # a crash mid-append
    with pytest.warns(RuntimeWarning, match="partial last line"):
        _store(storage, 2)
    assert [r["seed"] for r in _metadata(tmp_path)] == [1, 2]


def test_trace_round_trip_and_run_listing(tmp_path):
    storage = OrderedStorage(tmp_path)
    trace = {"run_id": "20261121-abc", "status": "complete", "request": "right pleural effusion",
             "events": [{"node": "localize", "elapsed_ms": 1.5}, {"node": "store", "elapsed_ms": 0.4}],
             "stored": ["chest_xray/pleural_effusion/pleural_effusion_000001.png"], "path": tmp_path}
    path = storage.write_trace("20261121-abc", trace)
    assert path == tmp_path / "runs" / "20261121-abc" / "trace.json"
    assert storage.read_trace("20261121-abc") == {**trace, "path": str(tmp_path)}

    storage.write_trace("20261121-abc", {**trace, "status": "partial"})  # replaced whole
    assert storage.read_trace("20261121-abc")["status"] == "partial"
    storage.write_trace("20261121-def", {"status": "failed", "events": []})
    runs = storage.list_runs()
    assert [r["run_id"] for r in runs] == ["20261121-abc", "20261121-def"]
    assert runs[0]["status"] == "partial" and runs[0]["n_events"] == 2 and runs[0]["n_stored"] == 1
    assert runs[0]["request"] == "right pleural effusion"
    assert not list((tmp_path / "runs").rglob("*.tmp"))

    with pytest.raises(StorageError, match="20261121-abc"):  # lists the runs that exist
        storage.read_trace("nope")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(StorageError, match="run id"):
            storage.write_trace(bad, {})
    with pytest.raises(StorageError, match="JSON"):
        storage.write_trace("run-x", {"bad": float("inf")})
    assert not (tmp_path / "runs" / "run-x" / "trace.json").exists()
