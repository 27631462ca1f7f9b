"""Image files: the one way the pipeline reads them (Pillow and numpy only, no torch: the deploy
CLI uses it).

Every image is read as displayed: its EXIF orientation (tag 0x0112) applied, as phones and
cameras expect, in training, evaluation, pictures, the runtime and the CLI alike; the sizes
curation records come from :func:`read_header`, which applies the same orientation. Only 8-bit
pixels are accepted. Every problem with a file (not an image, truncated, corrupt, 16-bit or
float pixels, too large to decode safely) is one :class:`~pipeline.errors.UserError` line naming
the file and the fix.
"""
from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pipeline.errors import UserError

#: Pillow modes read as 8-bit RGB without loss of meaning (16-bit and float images are not).
EIGHT_BIT_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr")
#: EXIF orientations whose display swaps width and height (5..8: a quarter turn, maybe mirrored).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
#: What Pillow raises on a file it cannot decode: not an image or an unknown format (OSError),
#: truncated or corrupt data (OSError, SyntaxError, ValueError, EOFError, struct.error).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
#: Pillow's guard against decompression bombs (a few KB of file claiming gigapixels).
TOO_LARGE = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says. ``width`` and ``height`` are the size as displayed (the
    EXIF orientation applied); ``orientation`` is that EXIF orientation, 1 (stored upright)
    when the file has none or an invalid one, else 2..8 as in the EXIF standard."""

    width: int
    height: int
    orientation: int


def check_eight_bit(path: Path, mode: str) -> None:
    """Refuse images whose pixels are not 8-bit: converting a 16-bit PNG to RGB saturates it to
    white, silently."""
    if mode not in EIGHT_BIT_MODES:
        raise UserError(f"{path}: image mode {mode!r} is not 8-bit (16-bit or float pixels); convert it to 8-bit "
                        "RGB, e.g. scaled by 255/65535")


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``path`` opened by Pillow (header read, pixels decoded on demand) and checked to be 8-bit.

    Any decode problem inside the block, including Pillow's decompression-bomb warning (made an
    error here), ends as one UserError line naming the file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                check_eight_bit(path, image.mode)
                yield image
        except TOO_LARGE as err:
            raise UserError(f"{path}: image too large to decode safely ({_one_line(err)}); downscale it or "
                            "remove it") from None
        except DECODE_ERRORS as err:
            raise UserError(f"{path}: cannot read image ({_one_line(err)}); replace or remove the file") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 when absent or invalid, without decoding pixels.

    The metadata Pillow read with the header is used (Pillow's PNG ``getexif`` would decode the
    whole image to look for an eXIf chunk behind the pixel data; writers put it before them).
    """
    value = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
    return value if value in range(2, 9) else 1


def read_header(path: Path) -> ImageHeader:
    """Size as displayed and EXIF orientation of ``path``, from its header (pixels not decoded,
    so corrupt pixel data is reported by :func:`read_rgb` when it decodes them)."""
    with _opened(path) as image:
        width, height = image.size
        orientation = _orientation(image)
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width=width, height=height, orientation=orientation)


def read_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` to ``[H, W, 3]`` uint8 RGB as displayed: EXIF orientation applied
    (``PIL.ImageOps.exif_transpose``), so ``H, W`` are :func:`read_header`'s height and width."""
    with _opened(path) as image:
        ImageOps.exif_transpose(image, in_place=True)
        return np.asarray(image.convert("RGB"))
