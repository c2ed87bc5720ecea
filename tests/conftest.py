"""Shared fixtures. Tests run offline: nothing may reach a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The wiring is tested on the tiny profile (fast, any modality); tests of the shipped demo generator name it.
os.environ.setdefault("CLINISYNTH_PROFILE", "tiny")
# Subprocesses (`python -m clinisynth...`, `-c`) must import the installed package, not the source folder
# clinisynth/ of the checkout that `-m` / `-c` would put first on sys.path (CI installs non-editable).
os.environ.setdefault("PYTHONSAFEPATH", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the repository on project machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session: the tiny pipeline and the retrieval index are built once."""
    return tmp_path_factory.mktemp("clinisynth-cache")


@pytest.fixture(scope="session")
def knowledge():
    from clinisynth.knowledge import load_knowledge

    return load_knowledge()


@pytest.fixture(scope="session")
def retriever(knowledge, cache_dir):
    from clinisynth.retrieval import Retriever

    return Retriever.open(knowledge=knowledge, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def planner(knowledge, retriever):
    from clinisynth.agents.planner import Planner

    return Planner(knowledge=knowledge, retriever=retriever)


@pytest.fixture(scope="session")
def reasoner(knowledge):
    """One lexicon-only reasoner for the session (spaCy / medspaCy matchers take seconds to build)."""
    from clinisynth.agents.reasoning import Reasoner

    return Reasoner(knowledge=knowledge)
