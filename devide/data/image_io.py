"""Radiograph image I/O: decode any chest X-ray file to an 8-bit greyscale PIL image, or say why it is unusable.

* :func:`load_image` returns a mode ``"L"`` image from JPEG, PNG (8-bit, or 16-bit windowed to 8 bits), other
  Pillow formats, and DICOM (modality + VOI LUT applied, MONOCHROME1 inverted so air is always dark).
  ``draft_size`` asks for reduce-on-load: JPEGs are decoded at a DCT scale (``Image.draft``, ~4x faster for a
  2048² radiograph to 224²), other formats are reduced by an integer factor; the result is never smaller than
  ``draft_size`` in either dimension, so the caller's resize still decides the final size.
* :func:`validate_image` fully decodes a file (headers alone miss truncation) and returns ``None`` when it is
  usable or a rejection reason ``"<code>: <detail>"``, where ``<code>`` is one of :data:`REASONS`. It never raises
  for a bad file, so one bad file cannot stop a dataset build.

``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left False: a truncated radiograph must be rejected, not
silently padded with grey.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MISSING = "missing"
ZERO_BYTE = "zero-byte"
TRUNCATED = "truncated"
HTML = "html"
NOT_AN_IMAGE = "not-an-image"
UNEXPECTED_MODE = "unexpected-mode"
SIXTEEN_BIT = "16-bit"
TOO_LARGE = "too-large"
UNREADABLE = "unreadable"
REASONS = (MISSING, ZERO_BYTE, TRUNCATED, HTML, NOT_AN_IMAGE, UNEXPECTED_MODE, SIXTEEN_BIT, TOO_LARGE, UNREADABLE)
"""Every rejection code :func:`validate_image` can return (the part before ``":"``)."""

DEFAULT_MODES = ("L", "RGB")
"""Pillow modes accepted by default for 8-bit radiographs (RGB is converted to luminance)."""
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
JPEG_END_OF_IMAGE = b"\xff\xd9"
# Trailing bytes some writers append after the JPEG end-of-image marker; anything else at the end of the file
# means the entropy-coded data was cut.
JPEG_TRAILING_PADDING = b"\x00\r\n\t "
# Radiographs are at most ~4300² (~18.5 MP); Pillow's default bomb limit (89 MP) is kept on purpose.
SNIFF_BYTES = 512


class ImageLoadError(ValueError):
    """A file that cannot be decoded as a radiograph; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, path: str | os.PathLike[str]):
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.path = Path(path)


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of :func:`inspect_image`: ``reason`` is None for a usable file."""

    reason: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def code(self) -> str | None:
        """The reason's code (one of :data:`REASONS`) without its detail."""
        return None if self.reason is None else self.reason.split(":", 1)[0]


# ---------------------------------------------------------------------------------------------- sniffing


def _looks_like_markup(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:200]


def _is_dicom(path: Path, head: bytes) -> bool:
    return head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


def _jpeg_is_complete(path: Path) -> bool:
    """True when the file ends with the JPEG end-of-image marker (optionally followed by padding)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4096))
        tail = handle.read()
    return tail.rstrip(JPEG_TRAILING_PADDING).endswith(JPEG_END_OF_IMAGE)


# ---------------------------------------------------------------------------------------------- conversion


def to_uint8(array: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Linearly map ``array`` (H, W) to uint8.

    ``window`` is (low, high) in the array's units; default: the array's own min and max (the MIMIC-CXR-JPG
    recipe). A constant image maps to zeros.
    """
    data = array.astype(np.float32, copy=False)
    low, high = (float(data.min()), float(data.max())) if window is None else window
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (np.clip(data, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def _reduce_to(image: Image.Image, draft_size: tuple[int, int] | None) -> Image.Image:
    """Shrink by the largest integer factor that keeps both sides >= ``draft_size`` (no-op when None)."""
    if draft_size is None:
        return image
    factor = min(image.width // max(1, draft_size[0]), image.height // max(1, draft_size[1]))
    return image.reduce(factor) if factor >= 2 else image


def _pil_to_l(image: Image.Image, window: tuple[float, float] | None) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        return Image.fromarray(to_uint8(np.asarray(image), window), mode="L")
    if image.mode == "L":
        return image
    if image.mode in ("LA", "RGBA", "PA"):
        image = image.convert("RGBA" if image.mode != "LA" else "LA")
    return image.convert("L")


def _load_dicom(path: Path, window: tuple[float, float] | None) -> Image.Image:
    """DICOM -> "L": modality LUT (rescale slope/intercept), VOI LUT/window from the file, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset = pydicom.dcmread(path, force=True)
    if "PixelData" not in dataset:
        raise ImageLoadError(f"{NOT_AN_IMAGE}: DICOM without pixel data", path)
    pixels = dataset.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1)
    elif pixels.ndim == 3:  # multi-frame: the first frame is the radiograph
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ImageLoadError(f"{UNEXPECTED_MODE}: DICOM pixel array of shape {pixels.shape}", path)
    values = apply_modality_lut(pixels, dataset)
    if window is None and ("WindowCenter" in dataset or "VOILUTSequence" in dataset):
        values = apply_voi_lut(values, dataset)
    image = to_uint8(np.asarray(values), window)
    if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        image = 255 - image
    return Image.fromarray(image, mode="L")


def load_image(
    path: str | os.PathLike[str],
    draft_size: tuple[int, int] | int | None = None,
    *,
    window: tuple[float, float] | None = None,
) -> Image.Image:
    """Decode ``path`` to an 8-bit greyscale ("L") PIL image.

    Args:
        path: JPEG / PNG / any Pillow format, or DICOM (``.dcm``/``.dicom`` or a ``DICM`` preamble).
        draft_size: (width, height) or one int for both: decode at reduced resolution, never below this size.
        window: (low, high) intensity window for 16-bit/float/DICOM data; default: the file's own VOI window
            (DICOM) or the image's min-max.

    Raises:
        ImageLoadError: with a :data:`REASONS` code when the file is missing or not a decodable radiograph.
    """
    path = Path(path)
    if isinstance(draft_size, int):
        draft_size = (draft_size, draft_size)
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise ImageLoadError(MISSING, path) from None
    except OSError as exc:
        raise ImageLoadError(f"{UNREADABLE}: {exc.strerror or exc}", path) from None
    if not head:
        raise ImageLoadError(ZERO_BYTE, path)
    if _looks_like_markup(head):
        raise ImageLoadError(f"{HTML}: markup text saved with an image extension", path)
    if _is_dicom(path, head):
        try:
            return _reduce_to(_load_dicom(path, window), draft_size)
        except ImageLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
            raise ImageLoadError(f"{NOT_AN_IMAGE}: DICOM unreadable ({type(exc).__name__}: {exc})", path) from None
    try:
        with Image.open(path) as opened:
            if draft_size is not None and opened.format == "JPEG":
                opened.draft("L", draft_size)
            opened.load()
            image = _pil_to_l(opened, window)
            if image is opened:
                image = opened.copy()
    except UnidentifiedImageError:
        raise ImageLoadError(f"{NOT_AN_IMAGE}: format not recognised", path) from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{TOO_LARGE}: {exc}", path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{TRUNCATED}: {exc}", path) from None
    return _reduce_to(image, draft_size)


# ---------------------------------------------------------------------------------------------- validation


def inspect_image(
    path: str | os.PathLike[str],
    *,
    modes: Collection[str] = DEFAULT_MODES,
    allow_16bit: bool = False,
) -> ImageCheck:
    """Decode ``path`` completely and check it; never raises for a bad file.

    Args:
        modes: Pillow modes accepted for 8-bit images (others -> ``unexpected-mode``).
        allow_16bit: accept 16-bit greyscale (PNG "I;16", DICOM); else ``16-bit`` (e.g. for MIMIC-CXR-JPG,
            whose images are all 8-bit, a 16-bit file means a wrong file was dropped in).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ImageCheck(MISSING)
    except OSError as exc:
        return ImageCheck(f"{UNREADABLE}: {exc.strerror or exc}")
    if not path.is_file():
        return ImageCheck(f"{NOT_AN_IMAGE}: not a regular file")
    if size == 0:
        return ImageCheck(ZERO_BYTE)
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        return ImageCheck(f"{UNREADABLE}: {exc.strerror or exc}")
    if _looks_like_markup(head):
        return ImageCheck(f"{HTML}: markup text saved with an image extension")
    if _is_dicom(path, head):
        return _inspect_dicom(path, allow_16bit)
    return _inspect_pillow(path, modes, allow_16bit)


def _inspect_pillow(path: Path, modes: Collection[str], allow_16bit: bool) -> ImageCheck:
    try:
        with Image.open(path) as image:
            fmt, mode, (width, height) = image.format or "", image.mode, image.size
            if mode in SIXTEEN_BIT_MODES and not allow_16bit:
                return ImageCheck(f"{SIXTEEN_BIT}: mode {mode} where 8-bit was expected", width, height, mode, fmt)
            if mode not in modes and mode not in SIXTEEN_BIT_MODES:
                return ImageCheck(f"{UNEXPECTED_MODE}: {mode} (expected {'/'.join(modes)})", width, height, mode, fmt)
            if fmt == "JPEG":
                image.draft(mode, (64, 64))  # DCT-scaled decode still reads every entropy-coded byte
            image.load()
    except UnidentifiedImageError:
        return ImageCheck(f"{NOT_AN_IMAGE}: format not recognised")
    except Image.DecompressionBombError as exc:
        return ImageCheck(f"{TOO_LARGE}: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return ImageCheck(f"{TRUNCATED}: {exc}")
    if fmt == "JPEG" and not _jpeg_is_complete(path):
        return ImageCheck(f"{TRUNCATED}: no JPEG end-of-image marker", width, height, mode, fmt)
    return ImageCheck(None, width, height, mode, fmt)


def _inspect_dicom(path: Path, allow_16bit: bool) -> ImageCheck:
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=True)
        bits = int(dataset.get("BitsStored", 8) or 8)
        width, height = int(dataset.get("Columns", 0) or 0), int(dataset.get("Rows", 0) or 0)
        if bits > 8 and not allow_16bit:
            return ImageCheck(f"{SIXTEEN_BIT}: DICOM BitsStored={bits} where 8-bit was expected", width, height,
                              f"DICOM{bits}", "DICOM")
        load_image(path)
    except ImageLoadError as exc:
        return ImageCheck(exc.reason)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        return ImageCheck(f"{NOT_AN_IMAGE}: DICOM unreadable ({type(exc).__name__})")
    return ImageCheck(None, width, height, f"DICOM{bits}", "DICOM")


def validate_image(
    path: str | os.PathLike[str],
    *,
    modes: Collection[str] = DEFAULT_MODES,
    allow_16bit: bool = False,
) -> str | None:
    """``None`` when ``path`` decodes to a usable radiograph, else ``"<code>: <detail>"`` (code in :data:`REASONS`)."""
    return inspect_image(path, modes=modes, allow_16bit=allow_16bit).reason


def reason_code(reason: str) -> str:
    """``"truncated: ..."`` -> ``"truncated"``."""
    return reason.split(":", 1)[0]
