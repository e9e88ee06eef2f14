"""The one resize every path uses (training cache, evaluation, serving), so they agree."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cxrtriage.io.image import Radiograph, to_uint8


def to_model_input(rg: Radiograph | np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` uint8 image (aspect not kept, as in the Kermany-224 set)."""
    arr = rg.to_uint8() if isinstance(rg, Radiograph) else rg
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR))
