"""Image files the pipeline accepts: 8-bit pixels only (Pillow only, no torch)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

#: Pillow modes read as 8-bit RGB without loss of meaning (16-bit and float images are not).
EIGHT_BIT_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr")


def check_eight_bit(path: Path, mode: str) -> None:
    """Refuse images whose pixels are not 8-bit: converting a 16-bit PNG to RGB saturates it to
    white, silently."""
    if mode not in EIGHT_BIT_MODES:
        raise UserError(f"{path}: image mode {mode!r} is not 8-bit (16-bit or float pixels); convert it to 8-bit "
                        "RGB, e.g. scaled by 255/65535")
