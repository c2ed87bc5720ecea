"""A sentence-transformers BERT model (mean pooling, normalised) run with numpy, for queries in a cold process.

Importing torch, transformers and sentence-transformers costs about 6 s before the first 20 ms query; a
``clinisynth plan`` that needs one retrieval search would spend most of its time there. This module runs the
same model from the same folder (``config.json``, ``model.safetensors``, ``tokenizer.json`` and the
sentence-transformers module files) with ``tokenizers``, ``safetensors`` and numpy only, so the query costs
milliseconds after a ~0.3 s load. It reads only what it supports (a ``BertModel`` with absolute positions, GELU,
mean-token pooling, optional ``Normalize``) and refuses anything else, so the caller falls back to
sentence-transformers; ``tests/test_retrieval.py`` checks both give the same vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class UnsupportedModel(ValueError):
    """The model folder is not one this encoder runs exactly; use sentence-transformers for it."""


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UnsupportedModel(f"{path} cannot be read ({error})") from None


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # the exact GELU BERT uses, not the tanh approximation

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class NumpyBertEncoder:
    """Mean-pooled (and, when the model says so, L2-normalised) BERT sentence embeddings with numpy.

    Args:
        model_dir: a sentence-transformers folder of a ``BertModel`` (e.g. the packaged all-MiniLM-L6-v2).

    Raises:
        UnsupportedModel: another architecture, pooling, activation or position embedding, or files missing.
    """

    def __init__(self, model_dir: Path | str) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        config = _read_json(folder / "config.json")
        modules = _read_json(folder / "modules.json")
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" or \
                config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModel(f"{folder}: only absolute-position GELU BERT models are run with numpy")
        if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
            raise UnsupportedModel(f"{folder}: modules {kinds} are not Transformer, Pooling[, Normalize]")
        pooling = _read_json(folder / modules[1]["path"] / "config.json")
        if not pooling.get("pooling_mode_mean_tokens") or any(
                pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                         "pooling_mode_mean_sqrt_len_tokens")):
            raise UnsupportedModel(f"{folder}: only mean-token pooling is run with numpy")
        for name in ("model.safetensors", "tokenizer.json"):
            if not (folder / name).is_file():
                raise UnsupportedModel(f"{folder} has no {name}")
        self.normalize = "Normalize" in kinds
        self.max_length = int(_read_json(folder / "sentence_bert_config.json").get("max_seq_length", 512)) \
            if (folder / "sentence_bert_config.json").is_file() else int(config["max_position_embeddings"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.dimension = int(config["hidden_size"])
        self.weights = {k.removeprefix("bert."): v.astype(np.float32) for k, v in
                        load_file(str(folder / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32 sentence embeddings."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self._forward(ids, types, mask)
        pooled = (hidden * mask[..., None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _forward(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.weights
        batch, length = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        head = self.dimension // self.heads
        bias = (1.0 - mask)[:, None, None, :] * np.finfo(np.float32).min  # padded keys get no attention

        def dense(h, name):
            return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

        def split(h):
            return h.reshape(batch, length, self.heads, head).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, self.dimension)
            x = _layer_norm(dense(context, f"{p}.attention.output.dense") + x,
                            w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"],
                            self.eps)
            inner = _gelu(dense(x, f"{p}.intermediate.dense"))
            x = _layer_norm(dense(inner, f"{p}.output.dense") + x, w[f"{p}.output.LayerNorm.weight"],
                            w[f"{p}.output.LayerNorm.bias"], self.eps)
        return x
