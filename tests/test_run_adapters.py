"""Adapters in the run path (issue 12): chosen by the plan or named with a weight, recorded in the trace and in every
metadata row, swapped between requests in one process without reloading the base (tiny profile)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from _adapter_helpers import edit_card, make_adapter
from typer.testing import CliRunner

from clinisynth import api
from clinisynth.cli.main import app
from clinisynth.generation.adapters import AdapterError, AdapterRequest, parse_adapter_spec
from clinisynth.settings import Settings

EFFUSION = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"
PNEUMONIA = "right lower lobe pneumonia, PA chest radiograph"
GLIOMA = "glioma, axial T1 post-contrast brain MRI"


@pytest.fixture(scope="module")
def base(cache_dir):
    """The tiny generator the adapters are built for (the runs load their own, from the same files)."""
    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    return Generator.from_profile(resolve_profile("tiny", cache_dir=cache_dir), device="cpu")


@pytest.fixture(scope="module")
def library(tmp_path_factory, base) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "chest_effusion", base, seed=1, labels=["pleural_effusion"])
    make_adapter(root / "chest_all", base, seed=2, labels=["normal", "pneumonia", "pleural_effusion"])
    make_adapter(root / "chest_pneumonia", base, seed=3, labels=["pneumonia"])
    make_adapter(root / "brain_glioma", base, seed=4, labels=["glioma"], modality="modality.brain_mri")
    # Knows the label and is more specific than chest_all, but was trained on another base: never chosen.
    make_adapter(root / "chest_pneumonia_elsewhere", base, seed=5, labels=["pneumonia"])
    signature = json.loads((root / "chest_pneumonia_elsewhere" / "clinisynth_adapter.json").read_text())["base_signature"]
    edit_card(root / "chest_pneumonia_elsewhere", base_signature=[signature[0], *(v + 0.5 for v in signature[1:])])
    return root


def _settings(cache_dir) -> Settings:
    return Settings(cache_dir=cache_dir, profile="tiny")


def _metadata(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _card_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "clinisynth_adapter.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runner(cache_dir) -> CliRunner:
    return CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None})


def test_the_plan_chooses_the_most_specific_adapter_that_fits_the_base(runner, library, tmp_path):
    out = tmp_path / "out"
    for request, expected in ((EFFUSION, "chest_effusion"), (PNEUMONIA, "chest_pneumonia"), (GLIOMA, "brain_glioma")):
        result = runner.invoke(app, ["generate", request, "-n", "1", "--out", str(out), "--adapters-dir", str(library)])
        assert result.exit_code == 0, (result.stdout, result.stderr)
    traces = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/trace.json"))]
    assert [t["adapters"]["chosen"][0]["name"] for t in traces] == ["chest_effusion", "chest_pneumonia", "brain_glioma"]
    effusion, pneumonia, _ = traces
    assert effusion["adapters"]["mode"] == "by plan" and "most specific" in effusion["adapters"]["reason"]
    assert "pleural_effusion" in effusion["adapters"]["reason"]
    # The adapter trained on another base model was left out, and the trace says why.
    assert pneumonia["adapters"]["skipped"] == [
        {"name": "chest_pneumonia_elsewhere", "why": pytest.approx(pneumonia["adapters"]["skipped"][0]["why"])}]
    assert "trained on base model" in pneumonia["adapters"]["skipped"][0]["why"]
    rows = _metadata(out)
    assert [(r["label"], [(a["name"], a["weight"]) for a in r["adapters"]]) for r in rows] == [
        ("pleural_effusion", [("chest_effusion", 1.0)]), ("pneumonia", [("chest_pneumonia", 1.0)]),
        ("glioma", [("brain_glioma", 1.0)])]
    assert rows[0]["adapters"][0]["card_sha256"] == _card_hash(library / "chest_effusion")
    shown = runner.invoke(app, ["trace", "show", traces[0]["run_id"], "--dir", str(out)])
    assert "adapters" in shown.stdout and "chest_effusion:1" in shown.stdout


def test_no_adapter_for_the_modality_or_label_means_the_base_model_and_says_why(runner, library, tmp_path):
    out = tmp_path / "out"
    for request in ("cystoid macular oedema on OCT", "normal chest radiograph"):
        result = runner.invoke(app, ["generate", request, "-n", "1", "--out", str(out), "--adapters-dir", str(library)])
        assert result.exit_code == 0, (result.stdout, result.stderr)
    oct_trace, normal_trace = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/trace.json"))]
    assert oct_trace["adapters"]["mode"] == "none" and oct_trace["adapters"]["chosen"] == []
    assert "is for modality.oct" in oct_trace["adapters"]["reason"] and "base model" in oct_trace["adapters"]["reason"]
    # chest_all knows 'normal': the broadest adapter is still the one that knows the label.
    assert normal_trace["adapters"]["chosen"][0]["name"] == "chest_all"
    assert all(r["adapters"] == [] for r in _metadata(out) if r["label"] != "normal")


def test_named_adapters_with_weights_by_name_and_by_path(runner, library, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", EFFUSION, "-n", "2", "--out", str(out), "--adapters-dir", str(library),
                                 "--adapter", "chest_all:0.5", "--adapter", f"{library / 'chest_effusion'}:0.25"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    (trace_path,) = (out / "runs").glob("*/trace.json")
    trace = json.loads(trace_path.read_text())
    assert trace["adapters"]["mode"] == "named"
    assert trace["adapters"]["requested"] == ["chest_all:0.5", f"{library / 'chest_effusion'}:0.25"]
    assert trace["adapters"]["reason"] == "named by the user (chest_all:0.5, chest_effusion:0.25)"
    assert trace["parameters"]["adapters"] == [
        {"name": "chest_all", "path": str(library / "chest_all"), "weight": 0.5,
         "card_sha256": _card_hash(library / "chest_all")},
        {"name": "chest_effusion", "path": str(library / "chest_effusion"), "weight": 0.25,
         "card_sha256": _card_hash(library / "chest_effusion")}]
    rows = _metadata(out)
    assert len(rows) == 2
    for row in rows:
        assert [(a["name"], a["weight"], a["card_sha256"]) for a in row["adapters"]] == [
            ("chest_all", 0.5, _card_hash(library / "chest_all")),
            ("chest_effusion", 0.25, _card_hash(library / "chest_effusion"))]


def test_the_python_api_takes_the_same_adapters(cache_dir, library, tmp_path):
    result = api.generate(EFFUSION, out=tmp_path / "out", n=1, settings=_settings(cache_dir),
                          adapters=[("chest_all", 0.75)], adapters_dir=library)
    assert [(a["name"], a["weight"]) for a in result.trace["adapters"]["chosen"]] == [("chest_all", 0.75)]
    assert [(a["name"], a["weight"]) for a in _metadata(tmp_path / "out")[0]["adapters"]] == [("chest_all", 0.75)]
    # The setting works like the option.
    settings = Settings(cache_dir=cache_dir, profile="tiny", adapters_dir=library)
    chosen = api.generate(PNEUMONIA, out=tmp_path / "out", n=1, settings=settings)
    assert chosen.trace["adapters"]["chosen"][0]["name"] == "chest_pneumonia"


def test_a_resumed_run_keeps_its_adapters_and_refuses_a_changed_one(cache_dir, library, tmp_path, monkeypatch):
    from clinisynth.agents import nodes

    settings = _settings(cache_dir)
    own = tmp_path / "lib"
    shutil.copytree(library / "chest_all", own / "chest_all")
    real_save = nodes._save_png_atomically

    def power_cut(image, path):
        raise RuntimeError("power cut")

    monkeypatch.setattr(nodes, "_save_png_atomically", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        api.generate(EFFUSION, out=tmp_path / "out", n=1, settings=settings, adapters=[f"{own / 'chest_all'}:0.5"])
    monkeypatch.setattr(nodes, "_save_png_atomically", real_save)
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()

    with pytest.raises(AdapterError, match="adapters it started with"):
        api.generate(None, out=tmp_path / "out", resume=run_dir.name, settings=settings, adapters=["chest_all"])
    card = (own / "chest_all" / "clinisynth_adapter.json").read_text()
    edit_card(own / "chest_all", steps=99)
    with pytest.raises(AdapterError, match="changed since run"):
        api.generate(None, out=tmp_path / "out", resume=run_dir.name, settings=settings)
    (own / "chest_all" / "clinisynth_adapter.json").write_text(card)

    api.generate(PNEUMONIA, out=tmp_path / "other", n=1, settings=settings)  # the shared generator moves on
    result = api.generate(None, out=tmp_path / "out", resume=run_dir.name, settings=settings)
    assert result.status == "complete" and result.trace["adapters"]["mode"] == "named"
    assert [(a["name"], a["weight"]) for a in _metadata(tmp_path / "out")[0]["adapters"]] == [("chest_all", 0.5)]


def test_swapping_adapters_keeps_the_base_loaded_and_returns_to_it_exactly(cache_dir, library, tmp_path):
    import torch

    settings = _settings(cache_dir)
    seen = []
    for adapters in (["chest_effusion"], ["chest_all:0.5"], [], ["chest_effusion"]):
        api.generate(EFFUSION, out=tmp_path / "out", n=1, settings=settings, adapters=adapters, adapters_dir=library)
        tiny = [g for key, g in api._generators.items() if key[0] == "tiny" and key[1].startswith(str(cache_dir))]
        assert len(tiny) == 1  # one generator per profile and process
        seen.append((id(tiny[0]), id(tiny[0].pipeline.unet), id(tiny[0].text_encoder)))
    assert len(set(seen)) == 1  # never reloaded
    generator = tiny[0]

    def unet_out():
        embeds, _ = generator.encode([EFFUSION])
        torch.manual_seed(0)
        latents = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            return generator.pipeline.unet(latents, torch.tensor([500]), encoder_hidden_states=embeds).sample

    generator.use_adapters([])
    plain = unet_out()
    generator.use_adapters([library / "chest_effusion"])
    first = unet_out()
    generator.use_adapters([(library / "chest_all", 0.5)])
    second = unet_out()
    assert (first - plain).abs().mean() > 1e-3 and (second - first).abs().mean() > 1e-3
    generator.use_adapters([])
    assert torch.equal(unet_out(), plain)  # exactly the base again
    assert not any("lora" in name for name, _ in generator.pipeline.unet.named_parameters())
    generator.use_adapters([library / "chest_effusion"])
    assert torch.allclose(unet_out(), first, atol=1e-6)
    generator.use_adapters([])


def test_a_bad_adapter_leaves_the_shared_generator_as_it_was(cache_dir, library, base, tmp_path):
    from safetensors.torch import load_file, save_file

    settings = _settings(cache_dir)
    api.generate(EFFUSION, out=tmp_path / "first", n=1, settings=settings, adapters=["chest_effusion"],
                 adapters_dir=library)
    broken = tmp_path / "lib" / "chest_broken"
    shutil.copytree(library / "chest_all", broken)
    weights = broken / "pytorch_lora_weights.safetensors"
    save_file(dict(list(load_file(str(weights)).items())[2:]), str(weights))
    with pytest.raises(AdapterError, match="missing key"):
        api.generate(EFFUSION, out=tmp_path / "second", n=1, settings=settings,
                     adapters=["chest_effusion", str(broken)], adapters_dir=library)
    assert not (tmp_path / "second").exists()
    (generator,) = [g for key, g in api._generators.items() if key[0] == "tiny" and key[1].startswith(str(cache_dir))]
    assert [a["name"] for a in generator.adapters] == ["chest_effusion"]  # what it held before, no half-load


@pytest.mark.parametrize("spec, expected", [
    ("chest_all", ("chest_all", 1.0)), ("chest_all:0.5", ("chest_all", 0.5)), ("a/b/c:-1", ("a/b/c", -1.0)),
])
def test_adapter_specs(spec, expected):
    assert parse_adapter_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [("chest_all:heavy", "must be a number"), ("chest_all:9", "from -4 to 4"),
                                           (":0.5", "names no adapter")])
def test_bad_adapter_specs(spec, message):
    with pytest.raises(AdapterError, match=message):
        parse_adapter_spec(spec)


def test_the_shipped_adapters_folder_is_the_default_and_may_be_empty():
    from clinisynth.models import ADAPTERS_DIR

    assert ADAPTERS_DIR.is_dir() and (ADAPTERS_DIR / "README.md").is_file()
    request = AdapterRequest([], directory=ADAPTERS_DIR, directory_given=False)
    choice = request.choose(modality="modality.chest_xray", label="pneumonia")
    assert choice.mode in ("none", "by plan")
    assert "base model" in choice.reason or choice.entries
