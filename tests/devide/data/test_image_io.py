"""Image I/O: every file kind decodes to 8-bit "L" with the right pixels, and every bad kind is named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from devide.data.image_io import (
    HTML,
    MISSING,
    NOT_AN_IMAGE,
    SIXTEEN_BIT,
    TRUNCATED,
    UNEXPECTED_MODE,
    ZERO_BYTE,
    ImageLoadError,
    inspect_image,
    load_image,
    reason_code,
    to_uint8,
    validate_image,
)

from .bad_files import gradient, write_dicom, write_html, write_jpeg, write_png16, write_truncated_jpeg


def test_good_jpeg_loads_as_l_and_validates(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg")
    image = load_image(path)
    assert image.mode == "L" and image.size == (64, 48)
    # JPEG q95 of a smooth ramp stays within a few grey levels of the source
    assert np.abs(np.asarray(image, dtype=int) - gradient().astype(int)).max() <= 4
    assert validate_image(path) is None
    check = inspect_image(path)
    assert (check.width, check.height, check.mode, check.format) == (64, 48, "L", "JPEG")


def test_rgb_jpeg_is_converted_to_luminance(tmp_path):
    image = load_image(write_jpeg(tmp_path / "rgb.jpg", mode="RGB"))
    assert image.mode == "L"
    assert validate_image(tmp_path / "rgb.jpg") is None


def test_draft_size_reduces_on_load_but_never_below_request(tmp_path):
    big = np.tile(gradient(64, 48), (8, 8))  # 512 x 384
    path = write_jpeg(tmp_path / "big.jpg", big)
    reduced = load_image(path, draft_size=(100, 100))
    assert reduced.mode == "L"
    # DCT scale 1/2 (256 x 192) is the smallest that keeps both sides >= 100; 1/4 would give 96 rows
    assert reduced.size == (256, 192)
    png = tmp_path / "big.png"
    Image.fromarray(big).save(png)
    # non-JPEG: the largest integer factor keeping both sides >= 100 is 3 (384 // 100)
    assert load_image(png, draft_size=100).size == (171, 128)  # ceil(512 / 3), 384 / 3


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda p: p, MISSING),
        (lambda p: (p.write_bytes(b""), p)[1], ZERO_BYTE),
        (write_truncated_jpeg, TRUNCATED),
        (write_html, HTML),
        (lambda p: (p.write_bytes(b"\x00\x01garbage" * 50), p)[1], NOT_AN_IMAGE),
        (lambda p: write_png16(p, np.full((8, 8), 4000)), SIXTEEN_BIT),
    ],
    ids=["missing", "zero-byte", "truncated", "html", "garbage", "16-bit"],
)
def test_bad_files_are_named_by_validate_and_raised_by_load(tmp_path, make, code):
    path = make(tmp_path / "bad.jpg")
    reason = validate_image(path)
    assert reason is not None and reason_code(reason) == code, reason
    if code != SIXTEEN_BIT:  # a 16-bit file is loadable (windowed), only rejected where 8-bit is expected
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert reason_code(info.value.reason) == code


def test_truncated_jpeg_whose_decoder_keeps_quiet_is_caught_by_the_eoi_check(tmp_path):
    path = write_jpeg(tmp_path / "cut.jpg")
    path.write_bytes(path.read_bytes()[:-2])  # only the end-of-image marker removed
    assert reason_code(validate_image(path)) == TRUNCATED


def test_unexpected_mode_cmyk(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(gradient(), mode="L").convert("CMYK").save(path, format="JPEG")
    assert reason_code(validate_image(path)) == UNEXPECTED_MODE
    assert validate_image(path, modes=("L", "CMYK")) is None


def test_png16_windowing_by_hand(tmp_path):
    array = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    path = write_png16(tmp_path / "x.png", array)
    assert validate_image(path, allow_16bit=True) is None
    # min-max: (v - 1000) * 255 / 2000 -> 0, 63.75, 127.5, 255 -> rint -> 0, 64, 128, 255
    assert np.asarray(load_image(path)).tolist() == [[0, 64], [128, 255]]
    # explicit window (1000, 2000): 3000 clips to 255, 1500 -> 127.5 -> 128
    assert np.asarray(load_image(path, window=(1000, 2000))).tolist() == [[0, 128], [255, 255]]


def test_to_uint8_constant_image_is_black():
    assert to_uint8(np.full((3, 3), 7.0)).max() == 0


def test_dicom_monochrome1_is_inverted_and_16bit_policy(tmp_path):
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    mono2 = np.asarray(load_image(write_dicom(tmp_path / "m2.dcm", array)))
    mono1 = np.asarray(load_image(write_dicom(tmp_path / "m1.dcm", array, photometric="MONOCHROME1")))
    assert mono2.tolist() == [[0, 64], [128, 255]]
    assert (mono1 == 255 - mono2).all()
    assert reason_code(validate_image(tmp_path / "m1.dcm")) == SIXTEEN_BIT
    assert validate_image(tmp_path / "m1.dcm", allow_16bit=True) is None
    eight = write_dicom(tmp_path / "e.dcm", np.array([[0, 255], [10, 20]]), bits=8)
    assert validate_image(eight) is None


def test_dicom_without_pixels_is_not_an_image(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((2, 2)))
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert reason_code(validate_image(path, allow_16bit=True)) == NOT_AN_IMAGE
