"""Cold start (issue 10): the knowledge and lexicon caches change nothing but the time, a bad cache file
is ignored and rewritten, an edit invalidates them, and ``clinisynth plan`` of a description the lexicon
resolves never imports the embedder's libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clinisynth.knowledge import DEFAULT_DATA_DIR, load_knowledge

LEXICON_TEXT = "small left pneumothorax, PA chest radiograph"
RETRIEVAL_TEXT = "pnuemothorx, PA chest radiograph"
DEVSET = Path(__file__).resolve().parent / "data" / "reasoning_devset.jsonl"
#: Matched on the record ids of the matchers' keys, which the engine turns into mentions.
SAMPLES = [
    LEXICON_TEXT,
    "Moderate right pleural effusions with RLL atelectasis; no PTX. AP portable CXR.",
    "MRI brain: enhancing mass in the left frontal lobe with vasogenic oedema and midline shift",
    "OCT OD: subretinal fluid, no drusen",
]


@pytest.fixture
def data_copy(tmp_path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, folder)
    return folder


def _add_synonym(data_dir: Path, record_id: str, synonym: str) -> None:
    """Add ``synonym`` to the flow-style synonym list of ``record_id`` (the layout of the packaged files)."""
    for path in sorted(data_dir.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip() == f"- id: {record_id}":
                for j in range(i + 1, len(lines)):
                    if lines[j].lstrip().startswith("synonyms: ["):
                        lines[j] = lines[j].replace("synonyms: [", f"synonyms: [{synonym}, ", 1)
                        path.write_text("".join(lines), encoding="utf-8")
                        return
    raise AssertionError(f"no flow-style synonyms of {record_id} under {data_dir}")


def _no_yaml(monkeypatch) -> None:
    import yaml

    def refuse(*args, **kwargs):
        raise AssertionError("the YAML was parsed although the cache holds it")

    monkeypatch.setattr(yaml, "safe_load", refuse)


# ---------------------------------------------------------------------- knowledge cache


def test_knowledge_cache_round_trip_gives_the_same_records_without_parsing(data_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    plain = load_knowledge(data_copy)
    first = load_knowledge(data_copy, cache_dir=cache)
    (cache_file,) = (cache / "knowledge").glob("*.json")
    _no_yaml(monkeypatch)
    again = load_knowledge(data_copy, cache_dir=cache)
    for loaded in (first, again):
        assert loaded.records == plain.records
        assert (loaded.content_hash, loaded.version, loaded.source_dir) == (
            plain.content_hash, plain.version, plain.source_dir)
        assert loaded.by_id.keys() == plain.by_id.keys()
    assert list((cache / "knowledge").glob("*.json")) == [cache_file]


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 1, "files": 3}', "[]"])
def test_a_corrupt_knowledge_cache_is_ignored_and_rewritten(data_copy, tmp_path, content):
    cache = tmp_path / "cache"
    plain = load_knowledge(data_copy, cache_dir=cache)
    (cache_file,) = (cache / "knowledge").glob("*.json")
    good = cache_file.read_text(encoding="utf-8")
    cache_file.write_text(content, encoding="utf-8")
    assert load_knowledge(data_copy, cache_dir=cache).records == plain.records
    assert cache_file.read_text(encoding="utf-8") == good


def test_a_tampered_knowledge_cache_falls_back_to_the_yaml(data_copy, tmp_path):
    cache = tmp_path / "cache"
    plain = load_knowledge(data_copy, cache_dir=cache)
    (cache_file,) = (cache / "knowledge").glob("*.json")
    payload = json.loads(cache_file.read_text(encoding="utf-8"))
    payload["files"][0]["records"][0]["kind"] = "not a kind"  # well-formed JSON, failing the schema
    cache_file.write_text(json.dumps(payload), encoding="utf-8")
    assert load_knowledge(data_copy, cache_dir=cache).records == plain.records


def test_an_unwritable_cache_dir_only_costs_the_parse(data_copy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    assert load_knowledge(data_copy, cache_dir=blocker / "cache").records == load_knowledge(data_copy).records


def test_a_knowledge_edit_invalidates_the_knowledge_cache(data_copy, tmp_path):
    cache = tmp_path / "cache"
    before = load_knowledge(data_copy, cache_dir=cache)
    _add_synonym(data_copy, "finding.pneumothorax", "quibbleworth")
    after = load_knowledge(data_copy, cache_dir=cache)
    assert after.content_hash != before.content_hash
    assert "quibbleworth" in after.get("finding.pneumothorax").synonyms
    assert "quibbleworth" not in before.get("finding.pneumothorax").synonyms
    assert len(list((cache / "knowledge").glob("*.json"))) == 2


# ---------------------------------------------------------------------- lexicon cache


def _normalize():
    """The Reasoner's token normaliser (moving from the engine to ``analysis`` in the reasoning rewrite)."""
    try:
        from clinisynth.agents.reasoning.analysis import normalize_doc
    except ImportError:
        from clinisynth.agents.reasoning.engine import _normalize_doc as normalize_doc
    return normalize_doc


def _lexicon(knowledge, cache_dir):
    from clinisynth.agents.reasoning.cache import blank_nlp
    from clinisynth.agents.reasoning.lexicon import load_or_build_lexicon

    nlp = blank_nlp()
    return nlp, load_or_build_lexicon(nlp=nlp, knowledge=knowledge, normalize=_normalize(), cache_dir=cache_dir)


def _matches(nlp, lexicon, text: str) -> list[tuple[str, int, int]]:
    doc = nlp.make_doc(text)
    _normalize()(doc)
    found = [*lexicon.norm_matcher(doc), *lexicon.orth_matcher(doc)]
    return sorted((nlp.vocab.strings[key], start, end) for key, start, end in found)


def _refuse_build(monkeypatch) -> None:
    from clinisynth.agents.reasoning.lexicon import Lexicon

    def refuse(**kwargs):
        raise AssertionError("the lexicon was built although the cache holds it")

    monkeypatch.setattr(Lexicon, "build", refuse)


def test_lexicon_cache_round_trip_matches_like_a_built_lexicon(knowledge, tmp_path, monkeypatch):
    built_nlp, built = _lexicon(knowledge, None)
    _lexicon(knowledge, tmp_path)  # builds and writes
    (cache_file,) = (tmp_path / "lexicon").glob("*.json")
    _refuse_build(monkeypatch)
    nlp, cached = _lexicon(knowledge, tmp_path)
    assert (cached.kinds, cached.expansions, cached.phrase_ids) == (built.kinds, built.expansions, built.phrase_ids)
    assert len(cached.norm_matcher) == len(built.norm_matcher) and len(cached.orth_matcher) == len(built.orth_matcher)
    for text in SAMPLES:
        assert _matches(nlp, cached, text) == _matches(built_nlp, built, text), text
    assert _matches(nlp, cached, LEXICON_TEXT)


def test_cached_knowledge_and_lexicon_give_the_same_plans(knowledge, tmp_path, monkeypatch):
    from clinisynth.agents.planner import Planner
    from clinisynth.agents.reasoning.lexicon import load_or_build_lexicon

    normalize = _normalize()
    load_knowledge(DEFAULT_DATA_DIR, cache_dir=tmp_path)
    plain = Planner(knowledge=load_knowledge(DEFAULT_DATA_DIR))
    cached = Planner(knowledge=load_knowledge(DEFAULT_DATA_DIR, cache_dir=tmp_path))
    load_or_build_lexicon(nlp=cached.reasoner.nlp, knowledge=cached.knowledge, normalize=normalize, cache_dir=tmp_path)
    # What a Reasoner given the cache dir holds: the lexicon loaded from the file just written, not built.
    _refuse_build(monkeypatch)
    lexicon = load_or_build_lexicon(nlp=cached.reasoner.nlp, knowledge=cached.knowledge, normalize=normalize,
                                    cache_dir=tmp_path)
    cached.reasoner.lexicon = lexicon
    monkeypatch.undo()
    assert cached.reasoner.lexicon is lexicon
    texts = [json.loads(line)["text"] for line in DEVSET.read_text(encoding="utf-8").splitlines() if line.strip()]
    for text in [*SAMPLES, *texts]:
        assert _outcome(cached, text) == _outcome(plain, text), text


def _outcome(planner, text: str):
    from clinisynth.agents.planner import PlanError

    try:
        return planner.plan(text)
    except PlanError as error:  # the dev set holds descriptions the planner refuses, on purpose
        return str(error)


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 1}', '{"format": 1, "key": 7, "norm": []}'])
def test_a_corrupt_lexicon_cache_is_ignored_and_rewritten(knowledge, tmp_path, content):
    nlp, built = _lexicon(knowledge, tmp_path)
    (cache_file,) = (tmp_path / "lexicon").glob("*.json")
    good = json.loads(cache_file.read_text(encoding="utf-8"))
    cache_file.write_text(content, encoding="utf-8")
    nlp, again = _lexicon(knowledge, tmp_path)
    assert again.kinds == built.kinds
    assert _matches(nlp, again, LEXICON_TEXT)
    assert json.loads(cache_file.read_text(encoding="utf-8")) == good


def test_a_knowledge_edit_invalidates_the_lexicon_cache(data_copy, tmp_path):
    before = load_knowledge(data_copy, cache_dir=tmp_path)
    nlp, old = _lexicon(before, tmp_path)
    assert not any(key == "REC|finding.pneumothorax" for key, _, _ in _matches(nlp, old, "left quibbleworth"))
    _add_synonym(data_copy, "finding.pneumothorax", "quibbleworth")
    nlp, new = _lexicon(load_knowledge(data_copy, cache_dir=tmp_path), tmp_path)
    assert ("REC|finding.pneumothorax", 1, 2) in _matches(nlp, new, "left quibbleworth")
    assert len(list((tmp_path / "lexicon").glob("*.json"))) == 2


def test_a_vocabulary_or_normaliser_change_changes_the_lexicon_key(knowledge, tmp_path, monkeypatch):
    from clinisynth.agents.reasoning import lexicon as lexicon_module
    from clinisynth.agents.reasoning.cache import blank_nlp

    _normalize_doc = _normalize()
    nlp = blank_nlp()
    key = lexicon_module.lexicon_cache_key(nlp=nlp, knowledge=knowledge, normalize=_normalize_doc)
    assert key == lexicon_module.lexicon_cache_key(nlp=blank_nlp(), knowledge=knowledge, normalize=_normalize_doc)
    edited = tmp_path / "vocab.py"
    edited.write_text(Path(lexicon_module.vocab.__file__).read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    monkeypatch.setattr(lexicon_module.vocab, "__file__", str(edited))
    assert lexicon_module.lexicon_cache_key(nlp=nlp, knowledge=knowledge, normalize=_normalize_doc) != key
    monkeypatch.undo()

    def other_normalize(doc):  # defined in this file: another source, another key
        _normalize_doc(doc)

    assert lexicon_module.lexicon_cache_key(nlp=nlp, knowledge=knowledge, normalize=other_normalize) != key


# ---------------------------------------------------------------------- lazy retrieval


def test_opening_a_cached_index_loads_nothing_until_a_search(knowledge, retriever, cache_dir):
    from clinisynth.retrieval import Retriever

    lazy = Retriever.open(knowledge=knowledge, cache_dir=cache_dir)
    assert lazy.cache_dir == retriever.cache_dir
    assert (lazy._embedder, lazy._index, lazy._entries) == (None, None, None)
    assert lazy.search("fluid in the pleural space", k=3) == retriever.search("fluid in the pleural space", k=3)
    assert lazy.index.ntotal == retriever.index.ntotal


_PLAN_IN_A_FRESH_PROCESS = """
import json, sys
from clinisynth.cli.main import app

def plan(text):
    try:
        app(["plan", "--json", text], standalone_mode=False)
    finally:
        sys.stdout.flush()
    return sorted(m for m in ("sentence_transformers", "transformers", "torch", "faiss", "scipy") if m in sys.modules)

print("\\nMODULES " + json.dumps([plan(sys.argv[1]), plan(sys.argv[2])]))
"""


def test_plan_of_a_lexicon_resolved_text_imports_no_embedder(knowledge, retriever, cache_dir, tmp_path):
    # A frozen copy of the knowledge: the subprocess must find the index built for exactly this content.
    from clinisynth.retrieval import Retriever

    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DATA_DIR, data)
    Retriever.open(knowledge=load_knowledge(data), cache_dir=cache_dir, embedder=retriever.embedder)
    env = {**os.environ, "CLINISYNTH_CACHE_DIR": str(cache_dir), "CLINISYNTH_KNOWLEDGE_DIR": str(data),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _PLAN_IN_A_FRESH_PROCESS, LEXICON_TEXT, RETRIEVAL_TEXT],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out, _, modules = done.stdout.rpartition("\nMODULES ")
    after_lexicon, after_retrieval = json.loads(modules)
    assert after_lexicon == [], f"plan of a lexicon-resolved text imported {after_lexicon}"
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(out.strip())
    second, _ = decoder.raw_decode(out.strip()[end:].strip())
    assert [f["id"] for f in first["findings"]] == ["finding.pneumothorax"]
    assert not any("retrieval" in note for note in first["notes"])
    # The same process still retrieves when a stretch needs it: the embedder loads then, as the numpy run of the
    # same model, so neither torch nor sentence-transformers is imported for a query.
    assert any("resolved by retrieval" in note for note in second["notes"]), second["notes"]
    assert "faiss" in after_retrieval
    assert not {"torch", "transformers", "sentence_transformers"} & set(after_retrieval), after_retrieval
