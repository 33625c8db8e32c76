"""Images as every se_hub model reads them: 8-bit RGB, whatever the file holds.

PIL's own ``convert('RGB')`` clips 16- and 32-bit greyscale (modes ``I;16``, ``I``, ``F``: microscopy, medical
imaging, scientific cameras) at 255, so a 16-bit photo turns almost white. Those are scaled by their real
range first:

- non-negative integers by the bit depth their largest value needs, rounded up to an even depth (a 12-bit
  sensor's 0..4095 in a 16-bit file maps to 0..255; a full 16-bit image is divided by 257);
- floats in [0, 1] by 255;
- anything else (negative values such as CT Hounsfield units, other floats) by the image's own min..max.
"""
import os
from typing import Union

import numpy as np
from PIL import Image

_WIDE_GREY = ('I', 'F')  # plus every 'I;16...' mode


def _to_8bit(values: np.ndarray, is_float: bool) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if not is_float and lo >= 0:
        bits = max(8, int(hi).bit_length())
        scale = 255.0 / (2 ** (bits + bits % 2) - 1)
        out = values * scale
    elif is_float and lo >= 0 and hi <= 1:
        out = values * 255.0
    else:
        out = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image, wide greyscale scaled by its real range (see the module docstring)."""
    if img.mode.startswith('I;16') or img.mode in _WIDE_GREY:
        values = np.asarray(img).astype(np.float64)
        return Image.fromarray(_to_8bit(values, img.mode == 'F'), 'L').convert('RGB')
    return img.convert('RGB')


def read_rgb(path: Union[str, os.PathLike]) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB (PIL's errors pass through for the caller to name the file)."""
    with Image.open(path) as img:
        return to_rgb(img)
