"""Robust image decoding: any file PIL can read, whatever its extension, to RGB uint8 stored pixels.

Datasets read the stored pixel grid (``upright=False``, the default): their annotation boxes refer to it.  A user's
photo (``detect.py``, :func:`~detection.api.load_detector`'s ``detect``) is read ``upright=True``: the EXIF
orientation a phone or camera recorded is applied, so boxes are in the frame the photo is viewed in.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageDecodeError", "read_image_rgb", "read_image_size", "pil_to_rgb", "turn_upright"]

# Photos bigger than this are almost certainly an error (decompression bomb); still well above any real photo here.
_MAX_PIXELS = 200_000_000


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _open(path: str | os.PathLike) -> Image.Image:
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(p, "file not found") from None
    except OSError as e:
        raise ImageDecodeError(p, f"cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise ImageDecodeError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
    except UnidentifiedImageError:
        raise ImageDecodeError(p, "not an image format PIL can identify (corrupt or not an image)") from None
    except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageDecodeError(p, f"cannot open image ({e})") from None
    if im.width <= 0 or im.height <= 0 or im.width * im.height > _MAX_PIXELS:
        raise ImageDecodeError(p, f"implausible image size {im.width}x{im.height}")
    return im


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the stored pixels, from the header only (fast; does not detect truncation)."""
    with _open(path) as im:
        return im.width, im.height


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as ``uint8[H, W, 3]`` RGB (16-bit grey scaled by its range, alpha dropped)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grey: scale by the type's range, not a clip at 255 (which PIL's convert("L") does).
        a = np.asarray(im).astype(np.float64)
        full = 65535.0 if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255) else 255.0
        if mode == "F":
            full = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        g = np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    # RGBA/LA: the alpha channel is dropped (stored colour kept); CMYK/YCbCr/L/1/P: PIL's colour conversion.
    return np.asarray(im.convert("RGB"))


def turn_upright(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation tag (2-8: mirrored and/or rotated) into the frame it is viewed in;
    ``im`` itself when it has no such tag."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # an unreadable EXIF block: the stored grid, as a viewer would show it
        return im
    return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im


def read_image_rgb(path: str | os.PathLike, *, upright: bool = False) -> np.ndarray:
    """Decode an image file to ``uint8[H, W, 3]`` RGB: the stored pixels, or with ``upright=True`` turned by the
    EXIF orientation (:func:`turn_upright`).

    Handles JPEG/PNG/BMP/... behind any extension, greyscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit.
    Raises :class:`ImageDecodeError` naming the file for a missing, empty, unidentifiable or truncated file.
    """
    im = _open(path)
    try:
        with im:
            im.load()  # a truncated file raises here: PIL.ImageFile.LOAD_TRUNCATED_IMAGES stays False
            arr = pil_to_rgb(turn_upright(im) if upright else im)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(path, f"corrupt or truncated image data ({e})") from None
    arr = np.ascontiguousarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageDecodeError(path, f"decoded to unexpected array {arr.shape} {arr.dtype}")
    return arr

