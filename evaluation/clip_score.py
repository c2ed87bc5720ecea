"""CLIP score of an image against its prompt, with open_clip (BiomedCLIP in the ``full`` profile).

CLIP score = 100 * max(cos(image embedding, text embedding), 0), the definition of Hessel et al.
(2021) as torchmetrics' ``CLIPScore`` computes it. Models load from a local directory
(``open_clip_config.json`` + weights, open_clip's ``local-dir:`` layout) or a hub id (``hf-hub:org/name``,
from the local cache when offline). Where no weights can be loaded, :meth:`ClipScorer.from_pretrained`
raises :class:`ClipUnavailable` with the reason: the verifier then reports the signal as unavailable
and decides on the others; nothing falls back to random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

#: BiomedCLIP (PubMedBERT text tower, ViT-B/16 image tower), MIT license, the ``full`` profile's default.
BIOMEDCLIP_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pth")


class ClipUnavailable(RuntimeError):
    """No CLIP model can be loaded here; the message says which and how to supply it."""


def _check_local_dir(path: Path) -> None:
    if not path.is_dir():
        raise ClipUnavailable(f"CLIP model directory {path} does not exist")
    if not (path / "open_clip_config.json").is_file():
        raise ClipUnavailable(f"CLIP model directory {path} has no open_clip_config.json (open_clip's local-dir layout)")
    if not any(any(path.glob(pattern)) for pattern in _WEIGHT_FILES):
        # open_clip would only warn and go on with random weights: refuse instead.
        raise ClipUnavailable(f"CLIP model directory {path} has a config but no weights (*.safetensors, *.bin, *.pth)")


class ClipScorer:
    """A loaded open_clip model with its preprocessing and tokenizer.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` model.
        preprocess: its image transform (PIL image -> tensor).
        tokenizer: its tokenizer (list of str -> token tensor).
        name: where it was loaded from (for traces and reports).
        device: torch device.
    """

    def __init__(self, *, model, preprocess, tokenizer, name: str, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.device = device

    @classmethod
    def from_pretrained(cls, location: str | Path = BIOMEDCLIP_ID, *, device: str = "cpu") -> "ClipScorer":
        """Load a CLIP model from a local directory (``/path`` or ``local-dir:/path``) or ``hf-hub:org/name``.

        Raises:
            ClipUnavailable: the directory, its config or weights, or the hub files are not available.
        """
        try:
            import open_clip
        except ImportError as error:
            raise ClipUnavailable("CLIP scores need the open_clip_torch package: pip install open_clip_torch") from error

        location = str(location)
        if location.startswith("local-dir:") or not location.startswith("hf-hub:"):
            path = Path(location.removeprefix("local-dir:")).expanduser()
            _check_local_dir(path)
            identifier = f"local-dir:{path}"
        else:
            identifier = location
        try:
            model, preprocess = open_clip.create_model_from_pretrained(identifier, device=device)
            tokenizer = open_clip.get_tokenizer(identifier)
        except Exception as error:  # noqa: BLE001 - open_clip raises RuntimeError / OSError / ValueError alike
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ClipUnavailable(
                f"cannot load CLIP model {location!r} [{detail[:300]}]; download it while online "
                "(`hf download <org/name>`) or point to a local open_clip directory"
            ) from error
        return cls(model=model, preprocess=preprocess, tokenizer=tokenizer, name=location, device=device)

    def embed_images(self, images: Sequence, *, batch_size: int = 32) -> np.ndarray:
        """L2-normalised image embeddings, ``(N, D)``; grey images are given three channels."""
        import torch
        from PIL import Image

        outputs = []
        for start in range(0, len(images), batch_size):
            batch = []
            for image in images[start:start + batch_size]:
                if isinstance(image, np.ndarray):
                    image = Image.fromarray(image)
                batch.append(self.preprocess(image.convert("RGB")))
            with torch.inference_mode():
                features = self.model.encode_image(torch.stack(batch).to(self.device))
            outputs.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        return np.concatenate(outputs)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, ``(N, D)``."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def score(self, images: Sequence, texts: Sequence[str] | str) -> np.ndarray:
        """CLIP score of each image against its text (one text for all, or one per image), shape ``(N,)``."""
        if isinstance(texts, str):
            texts = [texts] * len(images)
        if len(texts) != len(images):
            raise ValueError(f"give one text or one text per image, got {len(texts)} texts for {len(images)} images")
        if len(images) == 0:
            return np.zeros(0)
        image_embeds = self.embed_images(images)
        unique = sorted(set(texts))
        text_embeds = dict(zip(unique, self.embed_texts(unique)))
        cosine = np.array([float(image_embeds[i] @ text_embeds[text]) for i, text in enumerate(texts)])
        return 100.0 * np.maximum(cosine, 0.0)
