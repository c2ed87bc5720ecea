"""The one image-to-grey conversion (evaluation/images.py): Pillow's luma exactly, floats kept, used everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinisynth.evaluation.images import grey, grey_image, grey_uint8, grey_unit

ROOT = Path(__file__).resolve().parents[1]


def test_colour_becomes_pillows_luma_byte_for_byte_from_arrays_and_images():
    rgb = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(grey(rgb), expected) and grey(rgb).dtype == np.uint8
    assert np.array_equal(grey(Image.fromarray(rgb)), expected)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(grey(rgba), expected)  # alpha dropped
    assert np.array_equal(grey(Image.fromarray(rgb).convert("P")), np.asarray(Image.fromarray(rgb).convert("P").convert("L")))
    assert np.array_equal(grey_image(rgb), expected) and grey_image(rgb).mode == "L"


def test_grey_images_floats_and_wide_integers_keep_their_values():
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert grey(plane) is plane and np.array_equal(grey(plane[..., None]), plane)
    assert np.array_equal(grey(np.dstack([plane, plane])), plane)  # grey + alpha
    floats = np.full((4, 4, 3), 0.5)
    floats[0, 0] = np.nan
    values = grey(floats)
    assert np.isnan(values[0, 0]) and np.allclose(values[1:], 0.5)  # the sanity check must see NaN
    assert grey_uint8(floats)[0, 0] == 0 and grey_uint8(floats)[1, 1] == 128
    sixteen = Image.fromarray(np.array([[0, 300, 60000]], dtype=np.uint16))
    assert grey(sixteen).tolist() == [[0, 300, 60000]]
    assert grey_uint8(sixteen).tolist() == np.asarray(sixteen.convert("L")).tolist() == [[0, 255, 255]]
    assert np.allclose(grey_unit(plane), plane / 255.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="channel-first"):
        grey(np.zeros((3, 8, 8, 1)))
    with pytest.raises(TypeError, match="PIL image"):
        grey("not an image")


def test_no_other_module_converts_to_grey_itself():
    found = []
    for folder in ("agents", "generation", "evaluation", "training", "clinisynth"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "evaluation" / "images.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "convert" and node.args
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value == "L"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"use clinisynth.evaluation.images.grey / grey_image instead: {found}"
