"""Output dirs have an owner and a health check; ``clinisynth doctor DIR [--repair]`` reports and repairs."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from _dataset_helpers import DAMAGES, damage, make_dataset
from PIL import Image
from typer.testing import CliRunner

from clinisynth.cli.main import app
from clinisynth.generation.health import check_dataset, inspect_dataset
from clinisynth.generation.storage import PENDING_NAME, StorageError

REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


def _snapshot(root) -> dict:
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_or_foreign_dataset_is_refused_naming_the_file(tmp_path, how):
    out = tmp_path / "out"
    make_dataset(out)
    check_dataset(out)  # healthy first
    damage(out, how)
    before = _snapshot(out)
    with pytest.raises(StorageError) as refused:
        check_dataset(out)
    assert DAMAGES[how] in str(refused.value)
    if how != "prepared":
        assert f"clinisynth doctor {out}" in str(refused.value)
    assert _snapshot(out) == before  # the check writes nothing


def test_a_half_line_of_a_store_killed_half_way_is_not_damage(tmp_path):
    out = tmp_path / "out"
    make_dataset(out)
    damage(out, "half_line")
    (out / PENDING_NAME).write_text(json.dumps({"file_name": "chest_xray/normal/normal_000004.png"}))
    check_dataset(out)  # the next store finishes it (tests/test_resume.py)
    assert not [p for p in inspect_dataset(out) if p.blocking]


@pytest.mark.parametrize("how", sorted(set(DAMAGES) - {"prepared"}))
def test_doctor_reports_then_repairs_without_touching_accepted_images(tmp_path, how):
    out = tmp_path / "out"
    make_dataset(out)
    accepted = {name: data for name, data in _snapshot(out).items() if name.suffix == ".png"}
    damage(out, how)
    runner = CliRunner()
    report = runner.invoke(app, ["doctor", str(out)])
    assert report.exit_code == 1 and "blocking: " in report.stdout and "--repair" in report.stdout, report.output
    repaired = runner.invoke(app, ["doctor", str(out), "--repair"])
    assert repaired.exit_code == 0 and "healthy" in repaired.stdout, repaired.output
    check_dataset(out)
    after = _snapshot(out)
    damaged = {"zero_png", "truncated_png"}
    for name, data in accepted.items():  # every accepted image in place, byte for byte (but the damaged one)
        if not (how in damaged and name.name == "normal_000002.png"):
            assert after[name] == data
    quarantined = [name for name in after if name.parts[0] == "_quarantine"]
    assert quarantined, "nothing kept in _quarantine/"
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["file_name"] for r in records) == sorted(str(p.relative_to(out)) for p in out.glob("*/*/*.png"))
    if how in damaged:  # moved, not deleted: the bytes are kept
        (moved,) = [name for name in quarantined if name.name == "normal_000002.png.quarantined"]
        assert len(after[moved]) in (0, 40)
    # The dataset takes new images again, numbered after every number ever given.
    storage = make_dataset(out, n=0)
    stored = storage.store(image=Image.new("L", (16, 16), 7), modality="chest_xray", label="normal",
                           metadata={"seed": 99})
    assert stored.index == 4


def test_doctor_finds_orphans_temp_files_and_counter_drift_and_repairs_them(tmp_path):
    out = tmp_path / "out"
    make_dataset(out)
    Image.new("L", (16, 16), 200).save(out / "chest_xray" / "normal" / "normal_000007.png")  # no row
    (out / "chest_xray" / "normal" / "normal_000001.png").unlink()  # a row without its PNG
    (out / ".metadata.jsonl.abc123.tmp").write_bytes(b"half")
    kinds = sorted(p.kind for p in inspect_dataset(out))
    assert kinds == ["counter_drift", "orphan_png", "orphan_row", "temp_file"]
    check_dataset(out)  # none of these stops a run
    result = CliRunner().invoke(app, ["doctor", str(out), "--repair", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [] and len(report["repaired"]) >= 4
    assert not (out / "chest_xray" / "normal" / "normal_000007.png").exists()
    assert list(out.glob("_quarantine/*/chest_xray/normal/normal_000007.png.quarantined"))
    assert json.loads((out / ".clinisynth_counters.json").read_text())["counters"]["chest_xray/normal"] == 7


def test_doctor_refuses_bad_input_and_a_folder_being_written(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["doctor", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and "does not exist" in missing.stderr
    out = tmp_path / "out"
    make_dataset(out)
    damage(out, "prepared")
    prepared = runner.invoke(app, ["doctor", str(out)])
    assert prepared.exit_code == 2 and "made by `clinisynth prepare`" in prepared.stderr
    other = tmp_path / "other"
    make_dataset(other)
    trace = other / "runs" / "20261121T000000.000000Z-00000000" / "trace.json"
    trace.parent.mkdir(parents=True)
    trace.write_text(json.dumps({"status": "running", "process": {"pid": os.getpid(), "host": socket.gethostname()}}))
    (other / ".x.tmp").write_bytes(b"")
    busy = runner.invoke(app, ["doctor", str(other), "--repair"])
    assert busy.exit_code == 2 and "is writing into" in busy.stderr and (other / ".x.tmp").exists()


def _prepared(tmp_path):
    from clinisynth.training.prepare import PrepareConfig, prepare_dataset

    source = tmp_path / "source"
    rng = np.random.default_rng(0)
    for label in ("normal", "pneumonia"):
        (source / label).mkdir(parents=True)
        for index in range(3):
            pixels = (rng.random((40, 40)) * 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(source / label / f"{index}.png")
    out = tmp_path / "prepared"
    prepare_dataset(PrepareConfig(source=source, out=out, size=32, modality="chest_xray", workers=1), progress=False)
    return out


def test_generate_refuses_a_prepared_dataset_and_prepare_a_generated_one(cache_dir, tmp_path):
    prepared = _prepared(tmp_path)
    assert json.loads((prepared / ".clinisynth_dataset.json").read_text())["kind"] == "prepare"
    before = _snapshot(prepared)
    runner = CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None})
    refused = runner.invoke(app, ["generate", REQUEST, "-n", "1", "--out", str(prepared)])
    assert refused.exit_code == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "made by `clinisynth prepare`" in errors[0]
    assert _snapshot(prepared) == before  # its manifest got no row
    generated = tmp_path / "generated"
    make_dataset(generated)
    again = runner.invoke(app, ["prepare", str(tmp_path / "source"), str(generated), "--modality", "chest_xray",
                                "--no-progress"])
    assert again.exit_code == 2 and "made by `clinisynth generate / curate`" in again.stderr, again.output
