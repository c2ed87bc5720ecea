"""Every bad input the README's "Bad input" section lists: one ``error:`` line, exit code 2, nothing written.

The test reads the list from README.md, so a case added there without a check here fails, and a check here
whose case the README no longer names fails too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinisynth.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
REQUEST = "moderate right pleural effusion with basal atelectasis, PA chest radiograph"


def readme_bad_inputs() -> list[str]:
    """The clauses of the paragraph under ``### Bad input`` after "with nothing written:"."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Bad input\n(.*?)(?=^#)", text, flags=re.S | re.M)
    assert section, "README.md has no '### Bad input' section"
    paragraph = section.group(1).strip().split("\n\n")[0]
    listed = " ".join(paragraph.split()).split("with nothing written:", 1)
    assert len(listed) == 2, "the Bad input paragraph no longer says 'with nothing written:'"
    return [clause.strip().rstrip(".") for clause in listed[1].split(";") if clause.strip()]


def _writable_check_refused(monkeypatch):
    """An output dir that cannot be written: a read-only folder, or (as root, who writes anywhere) a refused probe."""
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".clinisynth-write-check"):
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


# phrase that names the case in the README -> (generate arguments after the description, env, setup)
# Every argument list is appended to ["generate", <description>, "--out", OUT]; "{tmp}" is the test's folder.
CASES: dict[str, list[dict]] = {
    "empty or whitespace description": [{"text": ""}, {"text": "   \n\t "}],
    "longer than `max_request_chars`": [{"text": "x" * 5000}, {"text": "pleural effusion " * 30,
                                                              "env": {"CLINISYNTH_MAX_REQUEST_CHARS": "100"}}],
    "nothing medical": [{"text": "the weather is lovely today and I bought bread"}],
    "modality the knowledge base does not cover": [{"text": "MRI of the left knee with a torn meniscus",
                                                    "message": "chest_xray"}],
    "unknown profile": [{"args": ["--profile", "huge"]}, {"env": {"CLINISYNTH_PROFILE": "huge"}}],
    "output dir that is a file": [{"out": "a-file"}],
    "is not writable": [{"out": "locked/out", "setup": "unwritable"}],
    "`-n` below 1": [{"args": ["-n", "0"]}, {"args": ["-n", "-3"]}],
    "steps outside 1..1000": [{"args": ["--steps", "0"]}, {"args": ["--steps", "1001"]}],
    "guidance outside 0..30": [{"args": ["--guidance", "-0.5"]}, {"args": ["--guidance", "30.5"]}],
    "`--max-rounds` outside 1..20": [{"args": ["--max-rounds", "0"]}, {"args": ["--max-rounds", "21"]}],
    "`--best-of` outside 1..16": [{"args": ["--best-of", "0"]}, {"args": ["--best-of", "17"]}],
    "`classifiers_dir` that is not a folder": [
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/a-file"}, "message": "classifiers_dir"},
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/nowhere"}, "message": "classifiers_dir"},
        {"env": {"CLINISYNTH_CLASSIFIERS_DIR": "{tmp}/a-file"}, "args": ["--profile", "demo"],
         "message": "classifiers_dir"},
    ],
    "threshold field that does not exist": [
        {"env": {"CLINISYNTH_VERIFIER_THRESHOLDS": json.dumps({"chest_xray": {"min_probability": 0.7}})},
         "message": "unknown field"},
        {"env": {"CLINISYNTH_VERIFIER_THRESHOLDS": json.dumps({"chest_xray": {"min_label_probability": 7}})},
         "message": "between 0 and 1"},
    ],
    "`memorisation_data` folder with no `manifest.csv`": [
        {"env": {"CLINISYNTH_MEMORISATION_DATA": json.dumps({"chest_xray": "{tmp}/empty-generator"})},
         "message": "memorisation_data.chest_xray"},
    ],
    "missing model": [{"args": ["--profile", "demo"], "env": {"CLINISYNTH_DEMO_GENERATOR": "{tmp}/empty-generator"},
                       "message": "CLINISYNTH_DEMO_GENERATOR"}],
    # "{lib}": tiny adapters that fit (chest_all, chest_pneumonia); "{bad}": broken ones (see adapter_libraries).
    "for another base model or text encoder": [
        {"args": ["--adapter", "{bad}/other_base"], "message": "trained on base model"},
        {"args": ["--adapter", "{bad}/other_encoder:0.5"], "message": "trained with text encoder"},
    ],
    "with missing keys": [{"args": ["--adapter", "{bad}/missing_keys"], "message": "missing key"}],
    "for a label it was not trained on": [{"args": ["--adapter", "{lib}/chest_pneumonia"],
                                           "message": "not trained on label 'pleural_effusion'"}],
    "two adapters that cannot combine": [
        {"args": ["--adapter", "{bad}/with_encoder", "--adapter", "{lib}/chest_all"], "message": "cannot combine"},
        {"args": ["--adapter", "{lib}/chest_all", "--adapter", "{bad}/other_length"], "message": "cannot combine"},
        {"args": ["--adapter", "{lib}/chest_all", "--adapter", "{lib}/chest_all:0.5"], "message": "named twice"},
    ],
    "an unknown adapter name": [
        {"args": ["--adapter", "chest_nothing", "--adapters-dir", "{lib}"], "message": "no adapter named 'chest_nothing'"},
        {"args": ["--adapter", "{tmp}/no-such-adapter"], "message": "does not exist"},
    ],
    "weight outside -4..4": [{"args": ["--adapter", "{lib}/chest_all:5"], "message": "from -4 to 4"},
                             {"args": ["--adapter", "{lib}/chest_all:heavy"], "message": "must be a number"}],
    "`adapters_dir` that is not a folder": [
        {"args": ["--adapters-dir", "{tmp}/a-file"], "message": "adapters_dir"},
        {"env": {"CLINISYNTH_ADAPTERS_DIR": "{tmp}/nowhere"}, "message": "adapters_dir"},
    ],
}


@pytest.fixture(scope="module")
def adapter_libraries(cache_dir, tmp_path_factory) -> dict[str, Path]:
    """``{lib}``: adapters for the tiny base; ``{bad}``: one per way an adapter can be wrong. Built on first use."""
    import json as json_module

    from _adapter_helpers import edit_card, make_adapter
    from safetensors.torch import load_file, save_file

    from clinisynth.generation.pipeline import Generator
    from clinisynth.generation.profiles import resolve_profile

    base = Generator.from_profile(resolve_profile("tiny", cache_dir=cache_dir), device="cpu")
    lib, bad = tmp_path_factory.mktemp("adapters"), tmp_path_factory.mktemp("bad-adapters")
    make_adapter(lib / "chest_all", base, seed=2, labels=["normal", "pneumonia", "pleural_effusion"])
    make_adapter(lib / "chest_pneumonia", base, seed=3, labels=["pneumonia"])
    for name, seed in (("other_base", 4), ("other_encoder", 5), ("missing_keys", 6), ("with_encoder", 7),
                       ("other_length", 8)):
        make_adapter(bad / name, base, seed=seed, labels=["pleural_effusion"])
    card = json_module.loads((bad / "other_base" / "clinisynth_adapter.json").read_text())
    edit_card(bad / "other_base", base_signature=[card["base_signature"][0], *(v + 0.5 for v in card["base_signature"][1:])])
    edit_card(bad / "other_encoder",
              text_encoder_signature=[*card["text_encoder_signature"][:2], *(v + 0.5 for v in card["text_encoder_signature"][2:])])
    weights = bad / "missing_keys" / "pytorch_lora_weights.safetensors"
    save_file(dict(list(load_file(str(weights)).items())[2:]), str(weights))
    (bad / "with_encoder" / "text_encoder").mkdir()
    for file_name in ("adapter_model.safetensors", "adapter_config.json"):
        (bad / "with_encoder" / "text_encoder" / file_name).write_bytes((bad / "with_encoder" / file_name).read_bytes())
    edit_card(bad / "with_encoder", text_encoder_lora=True)
    edit_card(bad / "other_length", max_length=77)
    return {"{lib}": lib, "{bad}": bad}


def test_every_case_the_readme_lists_is_checked_here_and_the_other_way_round():
    clauses = readme_bad_inputs()
    assert len(clauses) >= 10, clauses
    unchecked = [clause for clause in clauses if not any(phrase in clause for phrase in CASES)]
    assert not unchecked, f"README 'Bad input' cases without a check in {__file__}: {unchecked}"
    unlisted = [phrase for phrase in CASES if not any(phrase in clause for clause in clauses)]
    assert not unlisted, f"checks for cases the README no longer lists: {unlisted}"


@pytest.mark.parametrize("phrase, number", [(phrase, i) for phrase, cases in CASES.items() for i in range(len(cases))])
def test_a_bad_input_is_one_error_line_exit_2_and_nothing_written(cache_dir, tmp_path, monkeypatch, request, phrase,
                                                                  number):
    case = CASES[phrase][number]
    places = {"{tmp}": str(tmp_path)}
    if any(key in json.dumps(case) for key in ("{lib}", "{bad}")):
        places.update({key: str(path) for key, path in request.getfixturevalue("adapter_libraries").items()})

    def placed(value: str) -> str:
        for key, path in places.items():
            value = value.replace(key, path)
        return value

    (tmp_path / "a-file").write_text("keep me", encoding="utf-8")
    (tmp_path / "empty-generator").mkdir()
    if case.get("setup") == "unwritable":
        (tmp_path / "locked").mkdir()
        if os.geteuid() == 0:
            _writable_check_refused(monkeypatch)
        else:
            (tmp_path / "locked").chmod(0o500)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    out = tmp_path / case.get("out", "out")
    env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}
    env.update({key: placed(value) for key, value in case.get("env", {}).items()})
    result = CliRunner(env=env).invoke(app, ["generate", case.get("text", REQUEST), "--out", str(out), "-n", "1",
                                             *(placed(arg) for arg in case.get("args", []))])
    if (tmp_path / "locked").exists():
        (tmp_path / "locked").chmod(0o700)

    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), f"not a handled error: {result.exception!r}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.lstrip().startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    if "message" in case:
        assert case["message"] in errors[0]
    assert result.stdout == ""
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "keep me"


# ``clinisynth curate CAMPAIGN --out OUT``: the campaign file is the case's ``campaign`` (written to
# {tmp}/campaign.yaml); ``setup`` puts a journal in OUT first. Checked by the test below, and added to CASES
# after the test above has taken its parameters, so that the README walk sees them.
CAMPAIGN = 'profile: tiny\nsteps: 2\nitems:\n  - description: "normal chest radiograph"\n    count: 1\n'
CAMPAIGN_CASES: dict[str, list[dict]] = {
    "campaign file with an unknown key": [
        {"campaign": CAMPAIGN + "colour: red\n", "message": "campaign.yaml:6: unknown key 'colour'"},
        {"campaign": CAMPAIGN.replace("count: 1", "cuont: 1"), "message": "campaign.yaml:5: unknown key 'items[0].cuont'"},
        {"campaign": CAMPAIGN.replace("steps: 2", "steps: many"), "message": "campaign.yaml:2: steps"},
    ],
    "label the generator cannot draw": [
        {"campaign": "profile: demo\nitems:\n  - description: small left pneumothorax, PA chest radiograph\n"
                     "    count: 1\n", "message": "cannot draw 'pneumothorax' in chest_xray"},
    ],
    "campaign count below 1 or over the limit": [
        {"campaign": CAMPAIGN.replace("count: 1", "count: 0"), "message": "campaign.yaml:5: items[0].count: must be at least 1"},
        {"campaign": CAMPAIGN.replace("count: 1", "count: 100001"), "message": "must be at most 100000 (the limit)"},
        {"campaign": "profile: tiny\nitems_file: rows.csv\n", "rows": "description,count\nnormal chest radiograph,-2\n",
         "message": "rows.csv:2: count"},
    ],
    "campaign item that cannot be planned": [
        {"campaign": CAMPAIGN + '  - description: "the weather is lovely today"\n    count: 2\n',
         "message": "campaign.yaml:6: "},
    ],
    "output dir holding another campaign": [{"campaign": CAMPAIGN, "setup": "other-campaign",
                                             "message": "holds another campaign ('other'"}],
    "journal from another campaign": [
        {"campaign": CAMPAIGN, "setup": "foreign-journal", "message": "is from another campaign's output"},
        {"campaign": CAMPAIGN, "setup": "not-a-journal", "message": "is not a campaign journal"},
    ],
    "campaign file changed since its journal was made": [
        {"campaign": CAMPAIGN, "setup": "changed-campaign", "message": "items[0].count: 3 -> 1"},
    ],
    "unknown campaign adapter": [
        {"campaign": CAMPAIGN + "adapters: [no_such_adapter]\n", "message": "no adapter named 'no_such_adapter'"},
        {"campaign": CAMPAIGN + "    adapters: [no_such_adapter]\n",
         "message": "campaign.yaml:4: no adapter named 'no_such_adapter'"},
    ],
    "`--workers` outside 1..1024": [{"campaign": CAMPAIGN, "args": ["--workers", "0"],
                                     "message": "--workers must be between 1 and 1024, got 0"},
                                    {"campaign": CAMPAIGN, "args": ["--workers", "5000"], "message": "got 5000"}],
    "an empty `--ray-address`": [{"campaign": CAMPAIGN, "args": ["--ray-address", " "],
                                  "message": "--ray-address is empty"}],
    "`--workers` above 1 or `--ray-address` without Ray installed": [
        {"campaign": CAMPAIGN, "args": ["--workers", "2"], "setup": "no-ray",
         "message": 'need Ray, which is not installed; install it with pip install "clinisynth[ray]"'},
        {"campaign": CAMPAIGN, "args": ["--ray-address", "auto"], "setup": "no-ray", "message": "need Ray"},
    ],
}


def _journal_setup(setup: str, out: Path, campaign: Path) -> None:
    from clinisynth.curation.journal import Journal, PlannedItem, journal_path
    from clinisynth.curation.spec import load_campaign

    path = journal_path(out)
    if setup == "not-a-journal":
        path.parent.mkdir(parents=True)
        path.write_text("a note, not a database\n" * 20, encoding="utf-8")
        return
    source = campaign.parent / "made-from" / campaign.name  # the same file name: rows name their file
    source.parent.mkdir()
    source.write_text(CAMPAIGN.replace("count: 1", "count: 3") if setup == "changed-campaign" else CAMPAIGN,
                      encoding="utf-8")
    loaded = load_campaign(source)
    name = {"other-campaign": "other"}.get(setup, "campaign")
    item = PlannedItem(item=1, key="1", source="campaign.yaml", line=4, description="normal chest radiograph",
                       modality="chest_xray", label="normal", count=1, seed=5)
    with Journal.create(path, name=name, fingerprint=loaded.fingerprint(), canonical=loaded.canonical(),
                        parameters={}, items=[item]) as journal:
        if setup == "foreign-journal":  # it records an image and a run that are not in this output dir
            (chunk,) = journal.open_chunks(16)
            chunk = journal.start_run(chunk, "20261121T000000.000000Z-00000000")
            journal.finish_run(chunk, status="complete", stored={0: ("chest_xray/normal/normal_000001.png", 5)},
                               seconds=1.0)
    source.unlink()
    source.parent.rmdir()


@pytest.mark.parametrize("phrase, number", [(p, i) for p, cases in CAMPAIGN_CASES.items() for i in range(len(cases))])
def test_a_bad_campaign_is_one_error_line_exit_2_and_nothing_written(cache_dir, tmp_path, monkeypatch, phrase,
                                                                   number):
    case = CAMPAIGN_CASES[phrase][number]
    campaign, out = tmp_path / "campaign.yaml", tmp_path / "out"
    campaign.write_text(case["campaign"], encoding="utf-8")
    if "rows" in case:
        (tmp_path / "rows.csv").write_text(case["rows"], encoding="utf-8")
    if case.get("setup") == "no-ray":
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    elif "setup" in case:
        _journal_setup(case["setup"], out, campaign)
    before = {path: path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file()}
    result = CliRunner(env={"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}).invoke(
        app, ["curate", str(campaign), "--out", str(out), *case.get("args", [])])

    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), f"not a handled error: {result.exception!r}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert case["message"] in result.stderr, result.stderr
    assert result.stdout == ""
    assert {path: path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file()} == before
    assert sorted(tmp_path.rglob("*")) == sorted(set(before) | {p for p in tmp_path.rglob("*") if p.is_dir()})


CASES.update(CAMPAIGN_CASES)
