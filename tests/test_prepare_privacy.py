"""Privacy in ``clinisynth prepare``: text burned into pixels, DICOM Modality tags, the ``_sensitive/`` modes."""

from __future__ import annotations

import csv
import json
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from clinisynth.cli.main import app
from clinisynth.training.prepare import PrepareConfig, PrepareInputError, prepare_dataset
from clinisynth.training.prepare.burned_in import find_text_lines

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs the tesseract program (apt-get install tesseract-ocr)")


def _dicom(name: str) -> Path:
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(get_testdata_file(name))


def _background(seed: int, size: int = 224) -> np.ndarray:
    """A smooth radiograph-like picture: a bright ellipse with soft blobs on a dark field."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = 170 * np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.42) ** 2) ** 2)
    for _ in range(5):
        cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.15)]
        image += 40 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    return np.clip(image + 15, 0, 255).astype(np.uint8)


def _with_text(frame: np.ndarray, text: str, *, size: int, position: tuple[int, int], fill: int) -> np.ndarray:
    image = Image.fromarray(frame)
    ImageDraw.Draw(image).text(position, text, fill=fill, font=ImageFont.load_default(size=size))
    return np.asarray(image)


def _quarantine(out: Path) -> list[dict]:
    with (out / "quarantine.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("text", "size", "position", "fill"),
    [
        ("ID 4471298", 12, (6, 6), 255),  # patient id, top-left, white
        ("2023-04-17", 10, (120, 200), 255),  # date, bottom-right, small
        ("ST MARY HOSPITAL", 14, (20, 100), 0),  # hospital, black over the body
        ("SIEMENS", 16, (60, 10), 140),  # vendor, light grey on the dark field
    ],
)
def test_detector_finds_overlays_and_not_the_clean_picture(text, size, position, fill):
    clean = _background(seed=size)
    assert find_text_lines(clean) == []
    lines = find_text_lines(_with_text(clean, text, size=size, position=position, fill=fill))
    assert lines, f"{text!r} at {size} px was not found"
    top, left, bottom, right = lines[0].box
    assert left <= position[0] + size and top <= position[1] + size, "the line should be where the text was drawn"


def test_single_lateral_marker_is_not_text():
    marked = _with_text(_background(seed=3), "R", size=16, position=(10, 10), fill=255)
    assert find_text_lines(marked) == []


def _us_source(tmp_path: Path) -> Path:
    """The palette and RGB ultrasound examples of pydicom (vendor, hospital, date and ids in the pixels)."""
    source = tmp_path / "source" / "benign"
    source.mkdir(parents=True)
    for name in ("examples_palette.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm"):
        shutil.copy(_dicom(name), source / name)
    clean = np.stack([_background(seed=7, size=240)] * 3, axis=2)
    Image.fromarray(clean).save(source / "clean.png")
    Image.fromarray(_with_text(clean[..., 0], "PAT 0012 12/03/2021", size=12, position=(8, 8), fill=255)).save(source / "overlay.png")
    return source.parent


def test_palette_and_rgb_dicoms_with_burned_in_text_are_quarantined(tmp_path):
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(source=_us_source(tmp_path), out=out, size=64, modality="breast_ultrasound", workers=1), progress=False)
    quarantine = _quarantine(out)
    assert [row["reason"] for row in quarantine] == ["burned_in_text"] * 4
    assert summary.kept == 1 and len(_manifest(out)) == 1, "the clean picture is kept"
    source_map = (out / "_sensitive" / "source_map.csv").read_text()
    for name in ("examples_palette.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm", "overlay.png"):
        row = next(line for line in source_map.splitlines() if name in line)
        assert ",quarantined," in row
    # The reason says how much text, never what it reads: that would copy the identifier out.
    for row in quarantine:
        assert "text in the pixels" in row["detail"]
        for word in ("PHILIPS", "Philips", "BAPTIST", "2011", "0012"):
            assert word not in row["detail"]
    report = json.loads((out / "report.json").read_text())
    assert report["quarantined_by_reason"] == {"burned_in_text": 4}
    assert report["options"]["text_check"] is True and report["privacy"]["burned_in_text_check"].startswith("on")


def test_no_text_check_keeps_them_and_says_so(tmp_path):
    out = tmp_path / "out"
    config = PrepareConfig(source=_us_source(tmp_path), out=out, size=64, modality="breast_ultrasound", workers=1, text_check=False)
    summary = prepare_dataset(config, progress=False)
    # Nothing quarantined; the RGB and JPEG 2000 examples (one picture) and the overlay and its clean
    # original are near duplicates of each other.
    assert summary.quarantined == 0 and (summary.kept, summary.duplicates) == (3, 2)
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["text_check"] is False and report["privacy"]["burned_in_text_check"].startswith("OFF")
    assert "Burned-in text check: OFF" in (out / "report.md").read_text()
    assert json.loads((out / "_sensitive" / "prepare.json").read_text())["fingerprint"]["text_check"] is False
    # Turning the check back on for the same OUT is another preparation: refused, nothing changed.
    with pytest.raises(PrepareInputError, match="text_check"):
        prepare_dataset(PrepareConfig(source=config.source, out=out, size=64, modality="breast_ultrasound", workers=1), progress=False)


def test_missing_ocr_engine_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import pytesseract

    def missing():
        raise pytesseract.TesseractNotFoundError()

    monkeypatch.setattr(pytesseract, "get_tesseract_version", missing)
    out = tmp_path / "out"
    with pytest.raises(PrepareInputError, match="apt-get install tesseract-ocr.*--no-text-check"):
        prepare_dataset(PrepareConfig(source=_us_source(tmp_path), out=out, size=64, modality="breast_ultrasound", workers=1), progress=False)
    assert not out.exists()


def _mixed_modalities(tmp_path: Path) -> Path:
    """DICOMs whose Modality tags say US, CT, MR and NM, plus a CR one and an OT one, all filed as chest_xray."""
    source = tmp_path / "source" / "normal"
    source.mkdir(parents=True)
    for name, target in {
        "examples_rgb_color.dcm": "us.dcm",
        "CT_small.dcm": "ct.dcm",
        "MR_small.dcm": "mr.dcm",
        "JPEG2000.dcm": "nm.dcm",
        "SC_rgb_rle.dcm": "ot.dcm",
    }.items():
        shutil.copy(_dicom(name), source / target)
    dataset = pydicom.dcmread(_dicom("MR_small.dcm"))
    dataset.Modality = "CR"
    dataset.save_as(source / "cr.dcm")
    return source.parent


def test_modality_tag_that_contradicts_modality_is_quarantined(tmp_path):
    out = tmp_path / "out"
    prepare_dataset(PrepareConfig(source=_mixed_modalities(tmp_path), out=out, size=64, modality="chest_xray", workers=1), progress=False)
    mismatched = [row for row in _quarantine(out) if row["reason"] == "modality_mismatch"]
    named = sorted(code for row in mismatched for code in ("'US'", "'CT'", "'MR'", "'NM'") if code in row["detail"])
    assert named == ["'CT'", "'MR'", "'NM'", "'US'"]
    assert all("modality.chest_xray" in row["detail"] and "CR, DX" in row["detail"] for row in mismatched)
    source_map = (out / "_sensitive" / "source_map.csv").read_text()
    kept = {line.split(",")[1] for line in source_map.splitlines()[1:] if ",kept," in line}
    assert kept == {"normal/cr.dcm", "normal/ot.dcm"}, "CR fits chest_xray; OT (other) claims nothing"


def test_strict_refuses_the_run_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PrepareInputError, match=r"--strict: 4 DICOM file\(s\).*normal/ct.dcm \('CT' under modality.chest_xray\)"):
        prepare_dataset(
            PrepareConfig(source=_mixed_modalities(tmp_path), out=out, size=64, modality="chest_xray", workers=1, strict=True), progress=False
        )
    assert not out.exists()


def test_cli_strict_is_one_error_line_exit_2(tmp_path):
    source, out = _mixed_modalities(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(source), str(out), "--modality", "chest_xray", "--strict", "--no-progress"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --strict: 4 DICOM file(s)")
    assert not out.exists()


def test_strict_passes_when_tags_agree(tmp_path):
    source = tmp_path / "source" / "normal"
    source.mkdir(parents=True)
    shutil.copy(_dicom("MR_small.dcm"), source / "mr.dcm")
    out = tmp_path / "out"
    summary = prepare_dataset(PrepareConfig(source=source.parent, out=out, size=64, modality="brain_mri", workers=1, strict=True), progress=False)
    assert summary.kept == 1


def test_sensitive_folder_is_owner_only(tmp_path):
    out = tmp_path / "out"
    source = tmp_path / "source" / "normal"
    source.mkdir(parents=True)
    Image.fromarray(_background(seed=1)).save(source / "a.png")
    prepare_dataset(PrepareConfig(source=source.parent, out=out, size=64, modality="chest_xray", workers=1), progress=False)
    sensitive = out / "_sensitive"
    assert stat.S_IMODE(sensitive.stat().st_mode) == 0o700
    files = sorted(p.name for p in sensitive.iterdir())
    assert files == ["journal.jsonl", "prepare.json", "source_map.csv"]
    for path in sensitive.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    # An OUT an older version left world-readable is tightened on the next run.
    sensitive.chmod(0o755)
    (sensitive / "journal.jsonl").chmod(0o644)
    prepare_dataset(PrepareConfig(source=source.parent, out=out, size=64, modality="chest_xray", workers=1), progress=False)
    assert stat.S_IMODE(sensitive.stat().st_mode) == 0o700
    assert stat.S_IMODE((sensitive / "journal.jsonl").stat().st_mode) == 0o600


def test_dicom_modalities_only_on_modality_records():
    from pydantic import ValidationError

    from clinisynth.knowledge import load_knowledge
    from clinisynth.knowledge.schema import Record

    codes = {record.label: record.dicom_modalities for record in load_knowledge().modalities}
    assert codes["chest_xray"] == ["CR", "DX", "RG"] and codes["brain_mri"] == ["MR"] and codes["breast_ultrasound"] == ["US"]
    with pytest.raises(ValidationError, match="only modalities can list dicom_modalities"):
        Record(id="finding.x", kind="finding", term="x", label="x", modalities=["modality.chest_xray"], dicom_modalities=["CR"])
    with pytest.raises(ValidationError, match="upper-case"):
        Record(id="modality.x", kind="modality", term="x", label="x", dicom_modalities=["cr"])


def test_a_modality_tag_that_is_no_standard_code_is_not_quoted():
    from clinisynth.training.prepare.decode import QuarantineError, check_dicom_modality

    dataset = pydicom.Dataset()
    dataset.Modality = "DOEJOHN"  # a header can hold anything; only standard codes may reach the report
    with pytest.raises(QuarantineError) as caught:
        check_dicom_modality(dataset, modality_id="modality.chest_xray", accepted=("CR", "DX", "RG"))
    assert caught.value.reason == "modality_mismatch" and "DOEJOHN" not in caught.value.detail
    dataset.Modality = "OT"
    check_dicom_modality(dataset, modality_id="modality.chest_xray", accepted=("CR", "DX", "RG"))
