"""Sanity scorer: real medical images pass, degenerate ones fail with the right reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clinisynth.evaluation.hashing import NearDuplicateIndex, exact_hash, hamming, perceptual_hash, thumbnail
from clinisynth.evaluation.sanity import SanityResult, SanityThresholds, check_image

RNG = np.random.default_rng(0)


def _smooth(height: int = 64, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    disc = ((y - height / 2) ** 2 + (x - width / 2) ** 2 < (min(height, width) / 3) ** 2) * 120
    return (40 + disc + x).clip(0, 255).astype(np.uint8)


def test_real_images_pass(shared_data):
    """Real chest radiographs, brain MRI slices and MedMNIST images all pass the defaults."""
    paths = sorted((shared_data / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[:5]
    paths += sorted((shared_data / "chest_xray" / "train" / "PNEUMONIA").glob("*.jpeg"))[:5]
    paths += sorted((shared_data / "brain_mri" / "train" / "glioma").glob("*.png"))[:5]
    paths += sorted((shared_data / "brain_mri" / "validation" / "meningioma").glob("*.png"))[:5]
    assert len(paths) == 20
    for path in paths:
        result = check_image(Image.open(path))
        assert result.ok, (path.name, result)
    for name in ("pneumoniamnist", "breastmnist"):
        images = np.load(shared_data / "medmnist" / f"{name}.npz")["train_images"][:20]
        for image in images:
            result = check_image(image)
            assert result.ok, (name, result)


def test_smooth_synthetic_passes_with_every_check_value():
    result = check_image(_smooth())
    assert isinstance(result, SanityResult)
    assert result.ok and result.reason is None and result.value is None
    assert set(result.checks) >= {"non_finite", "out_of_range", "too_small", "constant", "blank", "pure_noise"}
    assert result.checks["pure_noise"] > 0.9


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (RNG.integers(0, 256, (64, 64), dtype=np.uint8), "pure_noise"),
        (RNG.random((64, 64, 3)).astype(np.float32), "pure_noise"),
        (np.full((64, 64), 137, dtype=np.uint8), "constant"),
        (np.zeros((64, 64), dtype=np.uint8), "constant"),
        (np.full((64, 64, 3), 0.5, dtype=np.float32), "constant"),
        (np.full((8, 8), 100, dtype=np.uint8), "too_small"),
        (np.tile(_smooth(), (1, 10)), "degenerate_shape"),
        (np.where(np.arange(64 * 64).reshape(64, 64) % 500 == 0, 255, 0).astype(np.uint8), "blank"),
        (np.where(np.arange(64 * 64).reshape(64, 64) % 500 == 0, 0, 255).astype(np.uint8), "blank"),
    ],
    ids=["noise_u8", "noise_float_rgb", "constant", "all_black", "constant_float", "too_small", "aspect", "nearly_black", "nearly_white"],
)
def test_degenerate_images_fail(image, reason):
    result = check_image(image)
    assert not result.ok
    assert result.reason == reason
    assert result.value == result.checks[reason]


def test_nan_and_out_of_range_fail():
    image = _smooth().astype(np.float32) / 255.0
    with_nan = image.copy()
    with_nan[3, 4] = np.nan
    result = check_image(with_nan)
    assert (result.ok, result.reason) == (False, "non_finite")
    assert result.value == pytest.approx(1 / image.size)

    result = check_image(image * 2.0 - 0.5)
    assert (result.ok, result.reason) == (False, "out_of_range")
    # diffusers-style [-1, 1] output passes when the caller says so.
    assert check_image(image * 2.0 - 1.0, thresholds=SanityThresholds(value_range=(-1.0, 1.0))).ok


def test_wide_integer_and_pil_inputs():
    sixteen = (_smooth().astype(np.uint16) * 16)  # 12-bit data in a 16-bit container
    assert check_image(sixteen).ok
    assert check_image(Image.fromarray(_smooth()).convert("RGB")).ok
    assert check_image(Image.fromarray(_smooth()).convert("P")).ok
    assert check_image(np.full((64, 64), 3000, dtype=np.uint16)).reason == "constant"


def test_thresholds_change_the_decision():
    image = _smooth()
    assert not check_image(image, thresholds=SanityThresholds(min_side=100)).ok
    assert not check_image(image, thresholds=SanityThresholds(min_neighbour_correlation=0.9999)).ok


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="channel-first"):
        check_image(np.zeros((3, 64, 64, 2)))
    with pytest.raises(TypeError):
        check_image("not an image")


def test_hashes_find_exact_and_near_duplicates_only():
    base = _smooth(96, 96)
    assert exact_hash(base) == exact_hash(base.copy())
    assert exact_hash(base) != exact_hash(base.astype(np.uint16))
    shifted = np.roll(base, 1, axis=1)
    brightened = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)
    other = np.flipud(np.rot90(_smooth(96, 96) // 2 + RNG.integers(0, 3, (96, 96), dtype=np.uint8)))
    other[:30, :30] = 255
    assert hamming(perceptual_hash(base), perceptual_hash(brightened)) <= 2
    index = NearDuplicateIndex()
    index.add("base", perceptual_hash(base), thumbnail(base))
    match = index.query(perceptual_hash(shifted), thumbnail(shifted))
    assert match is not None and match.key == "base"
    assert index.query(perceptual_hash(other), thumbnail(other)) is None
