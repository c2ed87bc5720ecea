"""Text conditioning for any BERT-family encoder: the one function training and inference both call.

diffusers' own ``encode_prompt`` gives a BERT encoder no attention mask unless the encoder's config says
``use_attention_mask`` (PITFALLS.md), and masked and unmasked embeddings differ a lot; encoding here in one
place keeps training and generation alike.

Prompts are always padded to ``max_length``: the U-Net attends over every position (it gets no mask), so the
sequence length is part of the conditioning and must not depend on the batch.
"""

from __future__ import annotations

import warnings

#: Token length when the caller sets none (SD's CLIP uses 77; WordPiece splits clinical words finer).
DEFAULT_MAX_LENGTH = 128
#: BERT position embeddings stop here.
MAX_SUPPORTED_LENGTH = 512


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than ``max_length``; its end was cut off."""


def encode_text(*, tokenizer, text_encoder, prompts: list[str], max_length: int | None = None, device=None):
    """Encode ``prompts`` into ``(embeds, attention_mask)`` for U-Net cross-attention.

    Args:
        tokenizer: the encoder's tokenizer (``transformers``).
        text_encoder: a BERT-family ``transformers`` model whose output has ``last_hidden_state``.
        prompts: one string per image; an empty string is allowed (unconditional / empty negative prompt).
        max_length: tokens per prompt including ``[CLS]``/``[SEP]``, 1..512 and at most the encoder's
            ``max_position_embeddings``; ``None`` means :data:`DEFAULT_MAX_LENGTH` (or less, when the encoder
            supports less). Longer prompts are truncated with a :class:`PromptTruncatedWarning`.
        device: where the tokens go; the encoder's device when ``None``.

    Returns:
        ``embeds`` of shape ``(len(prompts), max_length, hidden)`` in the encoder's dtype, and the ``attention_mask``
        (``(len(prompts), max_length)``, 1 for real tokens) that was passed to the encoder.
    """
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"every prompt must be a string, got {bad[0]!r}")

    supported = int(getattr(text_encoder.config, "max_position_embeddings", MAX_SUPPORTED_LENGTH))
    limit = min(MAX_SUPPORTED_LENGTH, supported)
    if max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH, limit)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= limit:
        raise ValueError(
            f"max_length must be an int from 2 to {limit} (this encoder's position limit), got {max_length!r}"
        )

    # Count tokens first so truncation is reported, never silent.
    lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False, padding=False)["input_ids"]]
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        index, count = too_long[0]
        warnings.warn(
            f"{len(too_long)} prompt(s) longer than max_length={max_length} tokens were truncated "
            f"(prompt {index} has {count} tokens: {prompts[index][:80]!r}...); raise max_length (up to {limit}) "
            "or shorten the prompt",
            PromptTruncatedWarning,
            stacklevel=2,
        )

    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    if device is None:
        device = next(text_encoder.parameters()).device
    input_ids = tokens["input_ids"].to(device)
    attention_mask = tokens["attention_mask"].to(device)
    # Runs under the caller's grad mode: inference wraps it in inference_mode, training may fine-tune the encoder.
    output = text_encoder(input_ids=input_ids, attention_mask=attention_mask)
    return output.last_hidden_state, attention_mask
