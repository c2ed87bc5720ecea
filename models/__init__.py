"""Models shipped with clinisynth: the verifier's classifiers (one folder per storage modality) and, when
trained, the demo generator. Read-only data; their cards say how each was trained and on what."""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
#: ``<modality>/`` folders written by ``clinisynth train classifier`` (e.g. ``chest_xray``, ``brain_mri``).
CLASSIFIERS_DIR = MODELS_DIR / "classifiers"
#: The ``demo`` profile's generator (``clinisynth train scratch``), when shipped.
DEMO_GENERATOR_DIR = MODELS_DIR / "demo-generator"
#: The default ``adapters_dir``: one LoRA adapter folder per sub-folder (``clinisynth train lora``), may be empty.
ADAPTERS_DIR = MODELS_DIR / "adapters"
