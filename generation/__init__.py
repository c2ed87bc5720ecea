"""Generation: model profiles, text conditioning, the Stable Diffusion sampler and ordered storage.

Importing this package imports no heavy library; torch, diffusers and transformers load inside the functions
that use them.
"""

from clinisynth.generation.pipeline import GeneratedImage, Generator
from clinisynth.generation.profiles import (
    PROFILE_NAMES,
    ModelNotFoundError,
    ModelProfile,
    ProfileError,
    check_profile_available,
    resolve_profile,
)
from clinisynth.generation.storage import OrderedStorage, StorageError, StoredImage, check_output_dir
from clinisynth.generation.text_encoding import PromptTruncatedWarning, encode_text

__all__ = [
    "PROFILE_NAMES",
    "GeneratedImage",
    "Generator",
    "ModelNotFoundError",
    "ModelProfile",
    "OrderedStorage",
    "ProfileError",
    "PromptTruncatedWarning",
    "StorageError",
    "StoredImage",
    "check_output_dir",
    "check_profile_available",
    "encode_text",
    "resolve_profile",
]
