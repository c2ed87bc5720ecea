"""Every bad input the README's "Bad input" section lists: one ``error:`` line, exit code 2, nothing written.

The test reads the list from README.md, so a case added there without a check here fails, and a check here
whose case the README no longer names fails too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _bad_input_cases import (CAMPAIGN_CASES, ENTRY_CASES, GENERATE_CASES, REQUEST, Case, build_adapter_libraries,
                              error_lines, generate_argv, journal_setup, lock, placed, prepare_folder,
                              refuse_write_checks, snapshot, unlock)
from clinisynth.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
CASES = GENERATE_CASES  # phrase -> generate cases; the campaign cases are added at the end of this file


def readme_bad_inputs() -> list[str]:
    """The clauses of the paragraph under ``### Bad input`` after "with nothing written:"."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Bad input\n(.*?)(?=^#)", text, flags=re.S | re.M)
    assert section, "README.md has no '### Bad input' section"
    paragraph = section.group(1).strip().split("\n\n")[0]
    listed = " ".join(paragraph.split()).split("with nothing written:", 1)
    assert len(listed) == 2, "the Bad input paragraph no longer says 'with nothing written:'"
    return [clause.strip().rstrip(".") for clause in listed[1].split(";") if clause.strip()]


@pytest.fixture(scope="module")
def adapter_libraries(cache_dir, tmp_path_factory) -> dict[str, Path]:
    """``{lib}``: adapters for the tiny base; ``{bad}``: one per way an adapter can be wrong. Built on first use."""
    return build_adapter_libraries(cache_dir, tmp_path_factory.mktemp("adapter-libraries"))


def test_every_case_the_readme_lists_is_checked_here_and_the_other_way_round():
    clauses = readme_bad_inputs()
    assert len(clauses) >= 10, clauses
    phrases = {*CASES, *(case.readme for case in ENTRY_CASES)}
    unchecked = [clause for clause in clauses if not any(phrase in clause for phrase in phrases)]
    assert not unchecked, f"README 'Bad input' cases without a check in {__file__}: {unchecked}"
    unlisted = [phrase for phrase in phrases if not any(phrase in clause for clause in clauses)]
    assert not unlisted, f"checks for cases the README no longer lists: {unlisted}"


@pytest.mark.parametrize("phrase, number", [(phrase, i) for phrase, cases in CASES.items() for i in range(len(cases))])
def test_a_bad_input_is_one_error_line_exit_2_and_nothing_written(cache_dir, tmp_path, monkeypatch, request, phrase,
                                                                  number):
    case = CASES[phrase][number]
    places = {"{tmp}": str(tmp_path)}
    if any(key in json.dumps(case) for key in ("{lib}", "{bad}")):
        places.update({key: str(path) for key, path in request.getfixturevalue("adapter_libraries").items()})

    def place(value: str) -> str:
        for key, path in places.items():
            value = value.replace(key, path)
        return value

    (tmp_path / "a-file").write_text("keep me", encoding="utf-8")
    (tmp_path / "empty-generator").mkdir()
    if case.get("setup", "").startswith("dataset:"):
        from _dataset_helpers import damage, make_dataset

        make_dataset(tmp_path / "out")
        damage(tmp_path / "out", case["setup"].split(":", 1)[1])
    if case.get("setup") == "unwritable":
        (tmp_path / "locked").mkdir()
        if not lock(tmp_path):
            refuse_write_checks(monkeypatch)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    out = tmp_path / case.get("out", "out")
    env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None}
    env.update({key: place(value) for key, value in case.get("env", {}).items()})
    result = CliRunner(env=env).invoke(app, generate_argv(case, out=str(out), places=places))
    unlock(tmp_path)

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
        journal_setup(case["setup"], out, campaign)
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


# ---- every other entry point (issue 15): one table, in-process unless argv bytes or start-up matter -------------

def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_case(case: Case, root: Path, *, cache_dir: Path, monkeypatch=None) -> tuple[int, str, str]:
    """Run ``case`` in ``root`` (its working directory too): exit code, stdout, stderr."""
    argv = [placed(arg, root) for arg in case.argv]
    env = {"CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_CONFIG": None,
           **{key: placed(value, root) for key, value in case.env.items()}}
    if case.subprocess:
        full = {**os.environ, **env}
        full = {key: value for key, value in full.items() if value is not None}
        done = subprocess.run([sys.executable, "-m", "clinisynth.cli.main", *argv], cwd=root, env=full,
                              capture_output=True, timeout=300)
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    monkeypatch.chdir(root)
    result = CliRunner(env=env).invoke(app, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return 1, result.stdout, result.stderr + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", ENTRY_CASES, ids=[case.name for case in ENTRY_CASES])
def test_every_entry_point_refuses_bad_input_with_one_line_exit_2_and_nothing_written(case, cache_dir, tmp_path,
                                                                                       monkeypatch):
    if case.needs_no_gpu and _gpu():
        pytest.skip("a good input on a machine with a CUDA GPU")
    prepare_folder(tmp_path, case)
    before = snapshot(tmp_path)
    if "locked" in case.setup and not lock(tmp_path):
        refuse_write_checks(monkeypatch)
    try:
        code, stdout, stderr = run_case(case, tmp_path, cache_dir=cache_dir, monkeypatch=monkeypatch)
    finally:
        unlock(tmp_path)

    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stdout, stderr)
    errors = error_lines(stderr)
    assert len(errors) == 1 and stderr.startswith("error: "), stderr
    assert case.message in errors[0], errors[0]
    assert stdout == ""
    assert snapshot(tmp_path) == before  # nothing written, nothing changed, originals untouched


def test_a_description_that_cannot_be_text_is_refused_before_any_heavy_import(tmp_path):
    """An empty, non-UTF-8 or escape-laden description fails before torch, spaCy or LangGraph load (it took 14 s)."""
    probe = ("import sys\n"
             "from clinisynth.cli.main import app\n"
             "for text in ('', 'pleural effusion \\udce9', '\\x1b[2Jpleural effusion'):\n"
             "    try:\n"
             "        code = app(['generate', text, '--out', 'out'], standalone_mode=False)\n"
             "    except SystemExit as error:\n"
             "        code = error.code\n"
             "    assert code == 2, code\n"
             "print(sorted(name for name in ('torch', 'spacy', 'langgraph', 'diffusers', 'transformers') "
             "if name in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
    assert len(error_lines(done.stderr)) == 3 and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_trace_list_and_show_print_terminal_escapes_as_text(tmp_path):
    """A trace written before the text check (or by another tool) cannot move the cursor, clear the screen or
    inject rich markup when a reviewer lists or shows it."""
    request = "\x1b[2J\x1b[31mpleural effusion [bold red]FAKE[/bold red]\u202e\x07"
    run = tmp_path / "runs" / "20261121T101530.123456Z-1a2b3c4d"
    run.mkdir(parents=True)
    (run / "trace.json").write_text(json.dumps({
        "run_id": run.name, "created_at": "2026-11-21T10:15:30Z", "status": "complete", "request": request,
        "parameters": {"n_images": 1}, "summary": {"requested": 1, "stored": 0, "rejected": 0},
        "events": [{"node": "localize", "elapsed_ms": 1.0, "input": {"request": request}, "output": {}}],
        "attempts": [], "stored": []}), encoding="utf-8")
    for argv in (["trace", "list", str(tmp_path)], ["trace", "show", run.name, "--dir", str(tmp_path)]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert not any(character in result.stdout for character in "\x1b\x07\u202e"), repr(result.stdout)
        assert "\\x1b[2J" in result.stdout and "\\u202e" in result.stdout, result.stdout
        if argv[1] == "show":
            assert "[bold red]FAKE[/bold red]" in result.stdout  # shown as typed, not read as markup
