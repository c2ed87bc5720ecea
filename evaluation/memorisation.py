"""Nearest-neighbour memorisation and duplicate checks over image embeddings.

Memorisation: a generated image too close to a training image may reproduce a patient's scan, so
it is rejected. The training images' embeddings sit in an exact FAISS inner-product index
(``IndexFlatIP`` on L2-normalised vectors, so scores are cosine similarities), built once per
dataset and embedder and cached on disk under a fingerprint of the file list.

Duplicates: a candidate too close to an image already accepted into the same output set.

The default embedder, :class:`ThumbnailEmbedder`, needs no weights: a 32 x 32 grey thumbnail,
mean-centred and L2-normalised, so the similarity of two images is the Pearson correlation of
their thumbnails. It finds copies (re-encoded, slightly shifted or re-contrasted) rather than
semantic likeness, which is what a privacy check needs; any callable with ``name`` that maps
images to ``(N, D)`` vectors can replace it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clinisynth.evaluation.images import grey_image

INDEX_NAME = "index.faiss"
KEYS_NAME = "keys.json"
META_NAME = "meta.json"
#: The folder of a generator or adapter that ships its training set's compact indexes, one per modality.
SHIPPED_INDEX_DIR = "memorisation"
#: Bump when the embedding of an image changes, so old caches are not reused.
CACHE_VERSION = 1
#: Defaults measured on the shared data with the 32 x 32 thumbnail embedder (BENCHMARKS.md / the
#: verifier report): distinct patients' radiographs reach about 0.97 at the 99.9th percentile of
#: nearest-neighbour similarity, re-encoded or lightly augmented copies score 0.99 and above.
DEFAULT_MEMORISATION_THRESHOLD = 0.985
DEFAULT_DUPLICATE_THRESHOLD = 0.985


class MemorisationError(ValueError):
    """An index cannot be built, loaded or queried; the message says why."""


class ThumbnailEmbedder:
    """Mean-centred, L2-normalised grey thumbnails: cosine similarity = thumbnail Pearson correlation.

    Args:
        size: thumbnail side in pixels.
    """

    def __init__(self, *, size: int = 32) -> None:
        if size < 4:
            raise MemorisationError(f"thumbnail size must be at least 4 pixels, got {size}")
        self.size = size
        self.name = f"thumbnail-{size}"

    def embed_one(self, image) -> np.ndarray:
        from PIL import Image

        grey = grey_image(image).resize((self.size, self.size), Image.Resampling.BOX)
        vector = np.asarray(grey, dtype=np.float32).ravel()
        vector = vector - vector.mean()
        norm = float(np.linalg.norm(vector))
        # A flat image has no direction: it stays the zero vector and matches nothing (similarity 0).
        return vector / norm if norm > 0 else vector

    def __call__(self, images: Sequence) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.size * self.size), dtype=np.float32)
        return np.stack([self.embed_one(image) for image in images]).astype(np.float32)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2:
        raise MemorisationError(f"embeddings must be a (N, D) array, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


@dataclass(frozen=True)
class Neighbour:
    """The closest indexed image: its key (file path) and cosine similarity."""

    key: str
    similarity: float


class MemorisationIndex:
    """Exact cosine nearest-neighbour search over the embeddings of a training set.

    Build with :meth:`build` or :func:`build_or_load_index`, load with :meth:`load`.

    Args:
        index: a FAISS ``IndexFlatIP`` holding L2-normalised embeddings.
        keys: one key (the file path) per indexed row.
        embedder_name: the embedder that made the vectors; queries must use the same one.
    """

    def __init__(self, *, index, keys: list[str], embedder_name: str) -> None:
        if index.ntotal != len(keys):
            raise MemorisationError(f"index has {index.ntotal} vectors but {len(keys)} keys")
        self.index = index
        self.keys = keys
        self.embedder_name = embedder_name

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, *, keys: list[str], embedder_name: str) -> "MemorisationIndex":
        import faiss

        vectors = _normalise(embeddings)
        if len(vectors) == 0:
            raise MemorisationError("cannot build a memorisation index from zero images")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index=index, keys=list(keys), embedder_name=embedder_name)

    @classmethod
    def build(cls, paths: Sequence[Path | str], *, embedder: Callable | None = None, batch_size: int = 256,
              on_progress: Callable[[int, int], None] | None = None) -> "MemorisationIndex":
        """Embed every image file in ``paths`` and index it (keys are the paths as strings)."""
        from PIL import Image

        embedder = embedder or ThumbnailEmbedder()
        chunks = []
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start:start + batch_size]:
                with Image.open(path) as image:
                    image.load()
                    images.append(image.copy())
            chunks.append(embedder(images))
            if on_progress is not None:
                on_progress(min(start + batch_size, len(paths)), len(paths))
        if not chunks:
            raise MemorisationError("cannot build a memorisation index from zero images")
        return cls.from_embeddings(np.concatenate(chunks), keys=[str(p) for p in paths], embedder_name=embedder.name)

    def save(self, directory: Path | str, *, fingerprint: str | None = None) -> None:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_NAME))
        (directory / KEYS_NAME).write_text(json.dumps(self.keys), encoding="utf-8")
        meta = {"embedder": self.embedder_name, "n": len(self.keys), "dim": self.dim, "version": CACHE_VERSION,
                "fingerprint": fingerprint}
        (directory / META_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path | str) -> "MemorisationIndex":
        import faiss

        directory = Path(directory)
        for name in (INDEX_NAME, KEYS_NAME, META_NAME):
            if not (directory / name).is_file():
                raise MemorisationError(f"memorisation index {directory} has no {name}; build it again")
        meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
        keys = json.loads((directory / KEYS_NAME).read_text(encoding="utf-8"))
        return cls(index=faiss.read_index(str(directory / INDEX_NAME)), keys=keys, embedder_name=meta["embedder"])

    def search(self, embeddings: np.ndarray, *, k: int = 1) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` cosine similarities ``(N, k)`` and the matching keys for each query embedding."""
        vectors = _normalise(embeddings)
        if vectors.shape[1] != self.dim:
            raise MemorisationError(
                f"query embeddings have {vectors.shape[1]} dims but the index ({self.embedder_name}) has {self.dim}; "
                "embed queries with the embedder that built the index"
            )
        k = min(k, len(self))
        similarities, rows = self.index.search(vectors, k)
        return similarities, [[self.keys[r] for r in row if r >= 0] for row in rows]

    def nearest(self, embeddings: np.ndarray) -> list[Neighbour]:
        """The single nearest training image of every query embedding."""
        similarities, keys = self.search(embeddings, k=1)
        return [Neighbour(key=key[0], similarity=float(sim[0])) for sim, key in zip(similarities, keys)]


def compact_index(index: MemorisationIndex, *, keys: list[str] | None = None) -> MemorisationIndex:
    """``index`` with its vectors scalar-quantised to 8 bits (FAISS ``IndexScalarQuantizer``, inner product): a
    quarter of the bytes, similarities within about 1e-3 of the exact ones (BENCHMARKS.md), so a generator or
    adapter can ship the memorisation index of its training set without shipping the images.

    Args:
        index: an exact index (:meth:`MemorisationIndex.build`).
        keys: names to keep for the training images (e.g. paths relative to the dataset); default: as in ``index``.
    """
    import faiss

    keys = list(index.keys) if keys is None else list(keys)
    if len(keys) != len(index):
        raise MemorisationError(f"{len(keys)} keys for an index of {len(index)} images")
    vectors = index.index.reconstruct_n(0, len(index))
    quantised = faiss.IndexScalarQuantizer(index.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    quantised.train(vectors)
    quantised.add(vectors)
    return MemorisationIndex(index=quantised, keys=keys, embedder_name=index.embedder_name)


def write_shipped_indexes(records, *, dataset_dir: Path | str, directory: Path | str,
                          embedder: Callable | None = None) -> dict[str, int]:
    """Write ``directory/<modality>/`` (:data:`SHIPPED_INDEX_DIR` of a model folder): per storage modality, the
    compact memorisation index of the training images in ``records`` (keys: paths relative to ``dataset_dir``).

    Args:
        records: :class:`clinisynth.training.data.ManifestRecord` rows the model was trained on.
        dataset_dir: the prepared dataset they come from.
        directory: where the per-modality folders go.
        embedder: as :meth:`MemorisationIndex.build` (default :class:`ThumbnailEmbedder`, the verifier's).

    Returns:
        images indexed per modality.
    """
    by_modality: dict[str, list] = {}
    for record in records:
        by_modality.setdefault(record.modality.removeprefix("modality."), []).append(record)
    root = Path(dataset_dir).resolve()
    counts = {}
    for modality, rows in sorted(by_modality.items()):
        paths = [Path(r.path) for r in rows]
        exact = MemorisationIndex.build(paths, embedder=embedder)
        keys = [str(p.resolve().relative_to(root)) if p.resolve().is_relative_to(root) else p.name for p in paths]
        compact_index(exact, keys=keys).save(Path(directory) / modality)
        counts[modality] = len(rows)
    return counts


def load_shipped_indexes(model_dir: Path | str) -> dict[str, MemorisationIndex]:
    """The compact indexes a model folder ships (:func:`write_shipped_indexes`), per modality; ``{}`` if none."""
    root = Path(model_dir) / SHIPPED_INDEX_DIR
    if not root.is_dir():
        return {}
    return {folder.name: MemorisationIndex.load(folder) for folder in sorted(root.iterdir())
            if (folder / META_NAME).is_file()}


def dataset_fingerprint(paths: Sequence[Path | str], *, embedder_name: str) -> str:
    """sha256 over every file's path, size and modification time, plus the embedder and cache version."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{embedder_name}|".encode())
    for path in sorted(str(p) for p in paths):
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build_or_load_index(paths: Sequence[Path | str], *, cache_dir: Path | str, embedder: Callable | None = None,
                        on_progress: Callable[[int, int], None] | None = None) -> MemorisationIndex:
    """The index of ``paths``, from ``cache_dir/<fingerprint>/`` when it was built before, else built and cached.

    Args:
        paths: the training images.
        cache_dir: where indexes are cached (one sub-folder per dataset fingerprint).
        embedder: defaults to :class:`ThumbnailEmbedder`.
        on_progress: ``on_progress(done, total)`` while embedding.
    """
    embedder = embedder or ThumbnailEmbedder()
    if len(paths) == 0:
        raise MemorisationError("cannot build a memorisation index from zero images")
    fingerprint = dataset_fingerprint(paths, embedder_name=embedder.name)
    directory = Path(cache_dir) / fingerprint[:32]
    if (directory / META_NAME).is_file():
        meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fingerprint:
            return MemorisationIndex.load(directory)
    index = MemorisationIndex.build(paths, embedder=embedder, on_progress=on_progress)
    index.save(directory, fingerprint=fingerprint)
    return index


def max_similarity(embedding: np.ndarray, others: np.ndarray | Sequence[np.ndarray] | None) -> tuple[float, int | None]:
    """Highest cosine similarity of one embedding to any of ``others`` and its row (``(0.0, None)`` when empty).

    Used for duplicates against images already accepted in the same dataset.
    """
    if others is None or len(others) == 0:
        return 0.0, None
    query = _normalise(np.asarray(embedding).reshape(1, -1))[0]
    matrix = _normalise(np.asarray(others).reshape(len(others), -1))
    if matrix.shape[1] != query.shape[0]:
        raise MemorisationError(f"embedding widths differ: {query.shape[0]} vs {matrix.shape[1]}")
    scores = matrix @ query
    row = int(scores.argmax())
    return float(scores[row]), row
