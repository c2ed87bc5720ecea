"""A scripted generator and radiograph-like pictures for graph tests (no diffusion model involved)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

REQUEST = "small left pneumothorax, PA chest radiograph"


@dataclass
class FakeImage:
    image: Image.Image
    seed: int
    elapsed_s: float = 0.001


def structured(seed: int) -> Image.Image:
    """A radiograph-like picture: smooth background, two dark ellipses placed by the seed, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    picture = 0.4 + 0.3 * y * rng.uniform(0.2, 1.0) + 0.2 * x * rng.uniform(-1.0, 1.0)
    for cx in (rng.uniform(0.15, 0.4), rng.uniform(0.6, 0.85)):
        cy, rx, ry = rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.2), rng.uniform(0.15, 0.35)
        picture -= 0.25 * (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1)
    picture += 0.05 * rng.standard_normal((64, 64))
    return Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8))


class ScriptedGenerator:
    """Produces what ``script(round, seed)`` says: 'good', 'constant', 'noise' or 'same'."""

    model_ids = {"profile": "scripted", "generator": "scripted", "text_encoder": "none"}
    guidance_interval = (0.0, 1.0)

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, *, prompt, negative_prompt, seeds, steps, guidance, callback=None):
        self.calls.append({"seeds": list(seeds), "steps": steps, "guidance": guidance, "prompt": prompt,
                           "negative_prompt": negative_prompt})
        results = []
        for index, seed in enumerate(seeds):
            kind = self.script(len(self.calls), seed)
            if kind == "good":
                image = structured(seed)
            elif kind == "same":
                image = structured(0)
            elif kind == "constant":
                image = Image.new("L", (64, 64), 128)
            else:
                image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8))
            results.append(FakeImage(image=image, seed=seed))
            if callback:
                callback(index + 1, len(seeds))
        return results
