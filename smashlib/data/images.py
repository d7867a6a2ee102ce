"""Images to tensors with PIL and torch only (no torchvision, which has no CPU wheel for our torch).

Resize the shorter side to the target size, then crop the centre: the square keeps the middle of the
picture, where the subject usually is, and every image of a batch gets the same shape.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import torch

from smashlib.data.errors import DataError
from smashlib.errors import MissingPackageError

#: How pixel values come out: uint8 0..255, float 0..1, or float -1..1 (what diffusion VAEs expect).
OUTPUT_FORMATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "int": lambda pixels: pixels,
    "float": lambda pixels: pixels.float() / 255.0,
    "normalized": lambda pixels: pixels.float() / 127.5 - 1.0,
}


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingPackageError(
            "image collate functions need Pillow to read and resize images: pip install 'smashlib[vision]' (or pillow)."
        ) from None
    return Image


def open_image(value: Any) -> Any:
    """A PIL image from what datasets and users hold: a PIL image, a path, raw bytes, an undecoded
    ``{"bytes", "path"}`` dict (``datasets.Image(decode=False)``) or an HxWxC uint8 array."""
    image_module = _pil()
    if isinstance(value, image_module.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        return image_module.open(value)
    if isinstance(value, (bytes, bytearray)):
        return image_module.open(io.BytesIO(value))
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return open_image(value["bytes"] or value["path"])
    if hasattr(value, "__array__"):
        import numpy as np

        return image_module.fromarray(np.asarray(value))
    raise DataError(
        f"cannot read an image from a {type(value).__name__}: give PIL images, file paths, bytes or HxWxC uint8 arrays."
    )


def image_to_tensor(value: Any, size: int, output_format: str = "int") -> torch.Tensor:
    """A ``[3, size, size]`` tensor: RGB, shorter side resized to ``size`` (bicubic), centre crop."""
    if output_format not in OUTPUT_FORMATS:
        raise DataError(f"unknown output_format '{output_format}': use one of {', '.join(OUTPUT_FORMATS)}.")
    import numpy as np

    image_module = _pil()
    image = open_image(value).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, image_module.Resampling.BICUBIC)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return OUTPUT_FORMATS[output_format](pixels)
