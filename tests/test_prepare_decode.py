"""Decoders of data preparation: pydicom's bundled files and raster images made here."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from clinisynth.training.prepare.decode import QuarantineError, decode_array, decode_dicom, decode_raster
from clinisynth.training.prepare.discover import SourceItem
from clinisynth.training.prepare.worker import WorkSettings, process_item

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def _dicom_bytes(name: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    with open(path, "rb") as handle:
        return handle.read()


def _png_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def _gradient(height=48, width=64, high=255, dtype=np.uint8) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return ((x + y) / (height + width - 2) * high).astype(dtype)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm"])
def test_monochrome_dicom_decodes_to_8bit_grey(name):
    decoded = decode_dicom(_dicom_bytes(name), pages="all")
    assert decoded.format == "DICOM" and decoded.mode.startswith("MONOCHROME2/")
    (frame,) = decoded.frames
    assert frame.dtype == np.uint8 and frame.ndim == 2
    assert frame.std() > 10  # windowing kept contrast, neither crushed nor flat


def test_compressed_syntaxes_give_the_same_pixels():
    plain = decode_dicom(_dicom_bytes("MR_small.dcm"), pages="all").frames[0]
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        assert np.array_equal(decode_dicom(_dicom_bytes(name), pages="all").frames[0], plain), name


def test_window_from_header_is_applied():
    data = _dicom_bytes("MR_small.dcm")
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert dataset.WindowCenter is not None
    dataset.WindowCenter, dataset.WindowWidth = 100, 50  # a narrow window saturates most tissue
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    narrow = decode_dicom(buffer.getvalue(), pages="all").frames[0]
    default = decode_dicom(data, pages="all").frames[0]
    assert (narrow == 255).mean() > 0.5 > (default == 255).mean()


def test_monochrome1_is_inverted():
    dataset = pydicom.dcmread(io.BytesIO(_dicom_bytes("MR_small.dcm")))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    inverted = decode_dicom(buffer.getvalue(), pages="all").frames[0].astype(int)
    plain = decode_dicom(_dicom_bytes("MR_small.dcm"), pages="all").frames[0].astype(int)
    assert np.abs(inverted - (255 - plain)).max() <= 1


def test_colour_and_multiframe_dicom():
    frames = decode_dicom(_dicom_bytes("SC_rgb_rle_2frame.dcm"), pages="all").frames
    assert len(frames) == 2 and frames[0].shape[2] == 3 and frames[0].dtype == np.uint8
    assert len(decode_dicom(_dicom_bytes("SC_rgb_rle_2frame.dcm"), pages="first").frames) == 1
    ybr = decode_dicom(_dicom_bytes("examples_ybr_color.dcm"), pages="first").frames[0]
    assert ybr.shape == (240, 320, 3)
    sixteen = decode_dicom(_dicom_bytes("SC_rgb_rle_16bit.dcm"), pages="all").frames[0]
    assert sixteen.dtype == np.uint8 and sixteen.max() > 200  # scaled by bit depth, not truncated


@pytest.mark.parametrize(
    ("name", "reason", "hint"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "unsupported_compression", "pylibjpeg"),
        ("MR_truncated.dcm", "truncated", "shorter"),
        ("rtplan.dcm", "no_pixel_data", "without an image"),
    ],
)
def test_dicom_failures_have_clear_reasons(name, reason, hint):
    with pytest.raises(QuarantineError) as caught:
        decode_dicom(_dicom_bytes(name), pages="all")
    assert caught.value.reason == reason
    assert hint in caught.value.detail


def test_non_dicom_bytes_are_unreadable():
    with pytest.raises(QuarantineError) as caught:
        decode_dicom(b"\x00" * 300, pages="all")
    assert caught.value.reason == "unreadable"


def test_sixteen_bit_tiff_is_kept_in_range():
    twelve_bit = _gradient(high=4000, dtype=np.uint16) + 50
    data = _png_bytes(twelve_bit, format="TIFF")
    frame = decode_raster(data, pages="all").frames[0]
    # Pillow's own convert("L") clips at 255: almost everything would be white.
    assert (np.asarray(Image.open(io.BytesIO(data)).convert("L")) == 255).mean() > 0.9
    assert frame.min() == 0 and frame.max() == 255
    assert np.all(np.diff(frame[0].astype(int)) >= 0)  # order kept


def test_multipage_tiff_all_or_first():
    pages = [Image.fromarray(_gradient() // (i + 1)) for i in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    assert len(decode_raster(buffer.getvalue(), pages="all").frames) == 3
    assert len(decode_raster(buffer.getvalue(), pages="first").frames) == 1


def test_bmp_palette_and_float_images():
    assert decode_raster(_png_bytes(_gradient(), format="BMP"), pages="all").format == "BMP"
    palette = Image.fromarray(_gradient()).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert decode_raster(buffer.getvalue(), pages="all").frames[0].shape[2] == 3
    with_nan = _gradient().astype(np.float32)
    with_nan[0, 0] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(with_nan, mode="F").save(buffer, format="TIFF")
    with pytest.raises(QuarantineError) as caught:
        decode_raster(buffer.getvalue(), pages="all")
    assert caught.value.reason == "non_finite"


def test_truncated_and_garbage_rasters():
    jpeg = _png_bytes(np.stack([_gradient()] * 3, axis=2), format="JPEG")
    with pytest.raises(QuarantineError) as caught:
        decode_raster(jpeg[: len(jpeg) // 2], pages="all")
    assert caught.value.reason == "truncated"
    with pytest.raises(QuarantineError) as caught:
        decode_raster(b"this is not an image at all", pages="all")
    assert caught.value.reason == "unreadable"


def test_worker_quarantines_zero_byte_and_degenerate(tmp_path):
    settings = WorkSettings(size=32, mode="L", pages="all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = process_item(SourceItem(key="empty.png", kind="raster", label="x", path=empty), settings)
    assert result.error is not None and result.error.reason == "zero_byte"
    noise = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    result = process_item(SourceItem(key="noise", kind="array", label="x", array=noise), settings)
    assert result.frames[0].reason == "pure_noise" and result.frames[0].png is None
    good = process_item(SourceItem(key="good", kind="array", label="x", array=_gradient()), settings)
    frame = good.frames[0]
    assert frame.reason is None and (frame.width, frame.height) == (64, 48)
    assert Image.open(io.BytesIO(frame.png)).size == (32, 32)


def test_decode_array_stretches_wide_types():
    frame = decode_array(_gradient(high=1000, dtype=np.uint16)).frames[0]
    assert frame.dtype == np.uint8 and frame.max() == 255
