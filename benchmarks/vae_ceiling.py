"""How much of each class survives a VAE round trip: real held-out images through each VAE and back, read by the
shipped classifier of their modality, with the reconstruction error. A generator cannot be recognised more often
than its decoder lets real images be, so this ranks candidate VAEs before a U-Net is trained on one.

    python benchmarks/vae_ceiling.py --vae shipped=models/demo-generator/vae --vae new=RUN/vae \
        --heldout brain_mri=DIR --heldout chest_xray=DIR@validation [--json OUT]

``MODALITY=DIR`` as in ``demo_quality.py`` (a prepared dataset; ``@validation``: the rows the trainers held out).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from _common import machine
from demo_quality import _pairs, agreement, real_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def grey_array(images: list) -> np.ndarray:
    """PIL images as one float array in [-1, 1], the VAE's pixel range."""
    return np.stack([np.asarray(image.convert("L"), dtype=np.float32) / 127.5 - 1 for image in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", action="append", required=True, help="NAME=DIR: an AutoencoderKL folder")
    parser.add_argument("--heldout", action="append", required=True, help="MODALITY=DIR[@validation]")
    parser.add_argument("--classifiers-dir", type=Path, default=None,
                        help="folder of MODALITY/ classifiers (default: the shipped ones)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    from clinisynth.evaluation.classifier import load_classifier
    from clinisynth.models import CLASSIFIERS_DIR
    from clinisynth.training.vae import reconstruct

    vae_dirs = _pairs(args.vae)
    vaes = {name: AutoencoderKL.from_pretrained(path) for name, path in vae_dirs.items()}
    results = {}
    for modality, where in _pairs(args.heldout).items():
        classifier = load_classifier((args.classifiers_dir or CLASSIFIERS_DIR) / modality)
        for label, images in real_images(where, modality=modality).items():
            row = {"n": len(images), "real": agreement(classifier.predict_proba(images), label=label,
                                                       classifier=classifier)}
            real_pixels = grey_array(images)
            for name, vae in vaes.items():
                rebuilt = reconstruct(vae, images)
                row[name] = {"agreement": agreement(classifier.predict_proba(rebuilt), label=label,
                                                    classifier=classifier),
                             "mse": float(((real_pixels - grey_array(rebuilt)) ** 2).mean())}
            results[f"{modality}/{label}"] = row
            print(json.dumps({f"{modality}/{label}": row}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "vaes": vae_dirs, "classes": results},
                                        indent=2))


if __name__ == "__main__":
    main()
