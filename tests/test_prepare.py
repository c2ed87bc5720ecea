"""Data preparation end to end: mixed sources, quarantine, duplicates, de-identification, resume, bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clinisynth.cli.prepare import prepare
from clinisynth.training.prepare import PrepareConfig, PrepareInputError, PrepareInterrupted, prepare_dataset

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

RNG = np.random.default_rng(0)
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID", "SOPInstanceUID")


def _dicom(name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(get_testdata_file(name))


def _brain_like(seed: int, height=96, width=80) -> np.ndarray:
    """A smooth picture that differs per seed (blobs at random places)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width))
    for _ in range(4):
        cy, cx, r = rng.uniform(10, height - 10), rng.uniform(10, width - 10), rng.uniform(6, 20)
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)) * rng.uniform(80, 200)
    return np.clip(image + 20, 0, 255).astype(np.uint8)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture()
def mixed_source(tmp_path) -> tuple[Path, set[str]]:
    """SOURCE/<split>/<class>/... with DICOM, raster and broken files; returns it and the header values."""
    source = tmp_path / "source"
    glioma, meningioma, normal = (source / "train" / n for n in ("glioma", "meningioma", "NOTUMOR"))
    for folder in (glioma, meningioma, normal):
        folder.mkdir(parents=True)
    secrets_in_headers: set[str] = set()
    dicoms = {
        "CT_small.dcm": glioma / "DOE_JOHN_1970.dcm",
        "MR_small.dcm": glioma / "mr",  # extension-less DICOM
        "MR_small_jp2klossless.dcm": glioma / "mr_j2k.DCM",  # same pixels as MR_small: an exact duplicate
        "JPEG2000.dcm": meningioma / "nm.dcm",
        "SC_rgb_rle_2frame.dcm": meningioma / "colour_2frame.dcm",
        "MR_small_jpeg_ls_lossless.dcm": meningioma / "jpegls.dcm",
        "MR_truncated.dcm": meningioma / "cut.dcm",
    }
    for name, target in dicoms.items():
        shutil.copy(_dicom(name), target)
        dataset = pydicom.dcmread(target, stop_before_pixels=True, force=True)
        for tag in IDENTIFYING_TAGS:
            value = str(dataset.get(tag, "") or "")
            if len(value) >= 6:
                secrets_in_headers.add(value)
    for index in range(4):
        Image.fromarray(_brain_like(index)).save(normal / f"slice_{index}.PNG")
    Image.fromarray(_brain_like(10)).save(normal / "bitmap.BMP")
    sixteen = (_brain_like(11).astype(np.uint16) * 16)
    Image.fromarray(sixteen).save(normal / "sixteen.tif")
    pages = [Image.fromarray(_brain_like(20 + i)) for i in range(2)]
    pages[0].save(normal / "stack.TIFF", save_all=True, append_images=pages[1:])
    buffer = io.BytesIO()
    Image.fromarray(np.stack([_brain_like(30)] * 3, axis=2)).save(buffer, format="JPEG")
    (normal / "cut.JPG").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (normal / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((64, 64), 90, dtype=np.uint8)).save(normal / "flat.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(normal / "noise.png")
    shutil.copy(normal / "slice_0.PNG", glioma / "copy_of_normal_slice.png")  # exact duplicate across labels
    (normal / "notes.txt").write_text("not an image")
    (normal / ".DS_Store").write_bytes(b"junk")
    return source, secrets_in_headers


def _config(source: Path, out: Path, tmp_path: Path, **options) -> PrepareConfig:
    label_map = tmp_path / "map.yaml"
    label_map.write_text("NOTUMOR: normal\n")
    options.setdefault("workers", 1)
    return PrepareConfig(source=source, out=out, size=64, modality="brain_mri", label_map=label_map, **options)


def _manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_mixed_folder_end_to_end(mixed_source, tmp_path):
    source, header_values = mixed_source
    before = _tree_hash(source)
    out = tmp_path / "out"
    summary = prepare_dataset(_config(source, out, tmp_path), progress=False)
    assert _tree_hash(source) == before, "the source must never be modified"

    rows = _manifest(out)
    assert list(rows[0]) == ["path", "text", "modality", "label", "source_sha256", "width", "height"]
    assert {row["label"] for row in rows} == {"glioma", "meningioma", "normal"}
    for row in rows:
        path = out / row["path"]
        assert path.parent.name == row["label"]
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 64))
        assert row["modality"] == "modality.brain_mri" and row["text"].startswith("MRI of the brain")
    assert len(rows) == summary.kept == len(list(out.glob("*/*.png"))) - len(list((out / ".contact_sheets").glob("*.png")))

    with (out / "quarantine.csv").open(newline="") as handle:
        quarantine = list(csv.DictReader(handle))
    reasons = {row["reason"] for row in quarantine}
    # CT_small (CT) and JPEG2000 (NM) are filed under brain_mri: their Modality tags contradict it.
    assert reasons == {"zero_byte", "truncated", "constant", "pure_noise", "unsupported_compression", "modality_mismatch"}
    assert sum(1 for row in quarantine if row["reason"] == "modality_mismatch") == 2
    assert sum(1 for row in quarantine if row["reason"] == "truncated") == 2  # the JPEG and the DICOM
    noise_row = next(row for row in quarantine if row["reason"] == "pure_noise")
    assert abs(float(noise_row["value"])) < 0.1

    with (out / "duplicates.csv").open(newline="") as handle:
        duplicates = list(csv.DictReader(handle))
    assert {row["kind"] for row in duplicates} == {"exact"}
    assert len(duplicates) == 2  # the J2K copy of MR_small, and the normal slice copied into glioma
    assert any(row["label"] != row["duplicate_of_label"] for row in duplicates)

    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["totals"]["kept"] == len(rows)
    assert report["per_class"]["normal"]["sources"] == 11
    assert report["per_class"]["meningioma"]["frames"] == 5  # the two-frame file counts twice
    assert report["ignored_files"] == {".txt": 1}
    assert report["label_sources"]["normal"] == ["NOTUMOR"]
    assert "SENSITIVE" in (out / "report.md").read_text()
    for label in {row["label"] for row in rows}:
        assert (out / ".contact_sheets" / f"{label}.png").is_file()

    # De-identification: no header value and no source file name outside _sensitive/.
    forbidden = {value.encode() for value in header_values} | {b"DOE_JOHN", b"slice_0", b"NOTUMOR/", b"colour_2frame"}
    assert header_values, "the test DICOMs should carry identifying values"
    for path in out.rglob("*"):
        if path.is_file() and "_sensitive" not in path.parts:
            data = path.read_bytes()
            assert not any(value in data for value in forbidden), path
            if path.suffix == ".png":
                assert b"tEXt" not in data and b"iTXt" not in data and b"eXIf" not in data
    source_map = (out / "_sensitive" / "source_map.csv").read_text()
    assert "train/glioma/DOE_JOHN_1970.dcm" in source_map


def test_resume_rewrites_nothing_and_interruption_is_consistent(mixed_source, tmp_path):
    source, _ = mixed_source
    out = tmp_path / "out"
    seen = []

    def interrupt_after_five(record):
        seen.append(record["key"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(PrepareInterrupted):
        prepare_dataset(_config(source, out, tmp_path), progress=False, on_record=interrupt_after_five)
    partial = _manifest(out)
    assert 0 < len(partial) <= 5
    assert all((out / row["path"]).is_file() for row in partial)
    assert not list(out.rglob("*.tmp"))
    assert not json.loads((out / "report.json").read_text())["complete"]

    resumed = prepare_dataset(_config(source, out, tmp_path), progress=False)
    assert resumed.skipped == 5 and resumed.processed == resumed.report["totals"]["sources"] - 5
    clean = prepare_dataset(_config(source, tmp_path / "clean", tmp_path), progress=False)
    pairs = lambda rows: sorted((row["label"], row["source_sha256"]) for row in rows)  # noqa: E731
    assert pairs(_manifest(out)) == pairs(_manifest(tmp_path / "clean"))
    assert resumed.report["totals"] == clean.report["totals"]

    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*/*.png")}
    again = prepare_dataset(_config(source, out, tmp_path), progress=False)
    assert again.processed == 0
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_process_pool_matches_inline(mixed_source, tmp_path):
    source, _ = mixed_source
    inline = prepare_dataset(_config(source, tmp_path / "one", tmp_path), progress=False)
    pooled = prepare_dataset(_config(source, tmp_path / "two", tmp_path, workers=2), progress=False)
    pairs = lambda out: sorted((row["label"], row["source_sha256"]) for row in _manifest(out))  # noqa: E731
    assert pairs(tmp_path / "one") == pairs(tmp_path / "two")
    assert inline.report["quarantined_by_reason"] == pooled.report["quarantined_by_reason"]


def test_near_duplicates_are_kept_out(tmp_path):
    source = tmp_path / "source"
    (source / "glioma").mkdir(parents=True)
    base = _brain_like(1, 128, 128)
    Image.fromarray(base).save(source / "glioma" / "a.png")
    Image.fromarray(base).save(source / "glioma" / "b.jpg", quality=85)  # re-encoded: not the same pixels
    Image.fromarray(_brain_like(2, 128, 128)).save(source / "glioma" / "c.png")
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(source=source, out=out, size=64, modality="brain_mri", workers=1), progress=False)
    assert summary.kept == 2
    assert summary.report["duplicates"] == {"exact": 0, "near": 1, "across_labels": 0}


def test_medmnist_npz(shared_data, tmp_path, monkeypatch):
    import clinisynth.agents.prompting as prompting

    # The knowledge base may not have breast ultrasound classes yet; the caption is not under test here.
    monkeypatch.setattr(prompting, "caption_for_label", lambda *, knowledge, modality_id, label: f"{modality_id} {label}")
    npz = shared_data / "medmnist" / "breastmnist.npz"
    archive = np.load(npz)
    expected = {name: int(sum((np.asarray(archive[f"{s}_labels"]).ravel() == number).sum() for s in ("train", "val", "test")))
                for number, name in ((0, "malignant"), (1, "benign"))}
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(source=npz, out=out, size=32, workers=1), progress=False)
    per_class = summary.report["per_class"]
    assert {label: counts["sources"] for label, counts in per_class.items()} == expected
    assert summary.kept + summary.quarantined + summary.duplicates == sum(expected.values())
    assert summary.quarantined == 0 and summary.kept > 0.5 * sum(expected.values())
    row = _manifest(out)[0]
    assert row["modality"] == "modality.breast_ultrasound" and row["text"].startswith("modality.breast_ultrasound")


def test_csv_source_with_text_and_modality(tmp_path):
    source = tmp_path / "source"
    (source / "imgs").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(_brain_like(index)).save(source / "imgs" / f"{index}.png")
    table = tmp_path / "labels.csv"
    table.write_text(
        "path,text,modality,label\n"
        "imgs/0.png,my own caption,modality.brain_mri,glioma\n"
        "imgs/1.png,,brain_mri,meningioma\n"
        "imgs/2.png,,,glioma\n"
    )
    out = tmp_path / "out"
    prepare_dataset(PrepareConfig(source=source, out=out, size=32, modality="brain_mri", labels_from="csv", csv=table, workers=1), progress=False)
    rows = {row["label"] + row["text"][:6]: row for row in _manifest(out)}
    assert "gliomamy own" in rows
    assert sum(1 for row in _manifest(out) if row["text"].startswith("MRI of the brain")) == 2


# ---- bad input: through the CLI function, registered on a tiny typer app -------------------------

def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("prepare")(prepare)
    app.command("noop")(lambda: None)  # two commands, so "prepare" is addressed by name as in the real CLI
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["prepare", *args, "--no-progress"])


def _one_class(tmp_path: Path, folder: str = "glioma") -> Path:
    source = tmp_path / "src"
    (source / folder).mkdir(parents=True)
    Image.fromarray(_brain_like(0)).save(source / folder / "a.png")
    return source


def test_cli_happy_path(tmp_path):
    source = _one_class(tmp_path)
    result = _run(str(source), str(tmp_path / "out"), "--size", "32", "--modality", "brain_mri", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "kept 1" in result.stdout and (tmp_path / "out" / "manifest.csv").is_file()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_source", "does not exist"),
        ("empty_source", "is empty"),
        ("out_inside_source", "inside SOURCE"),
        ("foreign_out", "not a clinisynth prepare output"),
        ("other_dataset", "another source"),
        ("other_options", "other options"),
        ("csv_missing_path", "do not exist"),
        ("csv_escaping_path", "resolve outside SOURCE"),
        ("bad_folder_label", "do not make valid labels"),
        ("bad_map_target", "not a valid label"),
        ("unknown_modality", "not in the knowledge base"),
        ("no_modality", "no modality"),
        ("label_not_in_knowledge", "--label-map"),
        ("bad_mode", "--mode"),
    ],
)
def test_cli_bad_input_exits_2_before_any_work(tmp_path, case, message):
    source = _one_class(tmp_path, folder="1-bad" if case == "bad_folder_label" else ("pituitary" if case == "label_not_in_knowledge" else "glioma"))
    out = tmp_path / "out"
    args = [str(source), str(out), "--modality", "brain_mri", "--workers", "1", "--size", "32"]
    if case == "missing_source":
        args[0] = str(tmp_path / "nowhere")
    elif case == "empty_source":
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
    elif case == "out_inside_source":
        args[1] = str(source / "glioma" / "out")
    elif case == "foreign_out":
        out.mkdir()
        (out / "thesis.docx").write_text("mine")
    elif case in ("other_dataset", "other_options"):
        other = _one_class(tmp_path / "other") if case == "other_dataset" else source
        assert _run(str(other), str(out), "--modality", "brain_mri", "--workers", "1", "--size", "32").exit_code == 0
        if case == "other_options":
            args[args.index("--size") + 1] = "64"
    elif case in ("csv_missing_path", "csv_escaping_path"):
        table = tmp_path / "t.csv"
        bad_path = "glioma/missing.png" if case == "csv_missing_path" else "../outside.png"
        (tmp_path / "outside.png").write_bytes((source / "glioma" / "a.png").read_bytes())
        table.write_text(f"path,label\nglioma/a.png,glioma\n{bad_path},glioma\n")
        args += ["--labels-from", "csv", "--csv", str(table)]
    elif case == "bad_map_target":
        (tmp_path / "m.yaml").write_text("glioma: Not A Label\n")
        args += ["--label-map", str(tmp_path / "m.yaml")]
    elif case == "unknown_modality":
        args[args.index("--modality") + 1] = "modality.xray_of_the_soul"
    elif case == "no_modality":
        args = args[:2] + args[4:]
    elif case == "bad_mode":
        args += ["--mode", "CMYK"]
    state_before = _tree_hash(out) if out.exists() else None
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0, "one line"
    if case not in ("other_dataset", "other_options", "foreign_out"):
        assert not out.exists(), "nothing may be written before the input is checked"
    elif state_before is not None:
        assert _tree_hash(out) == state_before


def test_changed_source_is_refused(tmp_path):
    source = _one_class(tmp_path)
    config = PrepareConfig(source=source, out=tmp_path / "out", size=32, modality="brain_mri", workers=1)
    prepare_dataset(config, progress=False)
    Image.fromarray(_brain_like(5)).save(source / "glioma" / "a.png")
    with pytest.raises(PrepareInputError, match="changed"):
        prepare_dataset(config, progress=False)
