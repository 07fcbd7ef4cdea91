"""Read a folder of generated images for scoring, and say which files cannot be used and why.

`load_image_folder` gives uint8 images (N, C, H, W) in the data's shape, sorted by file name (plain string
order: `img10.png` comes before `img2.png`). Only the files directly in the folder whose suffix is one of
`IMAGE_SUFFIXES` (any case) are read; other files (`.txt`, `.json`, ...) and subfolders are ignored.

A file is bad, and named in a one-line problem such as `bad.png: truncated (image file is truncated)`, when it is
- unreadable: PIL cannot identify it as an image;
- the wrong size: not the data's H x W (nothing is resized or cropped);
- truncated: its header reads but its pixels do not (`img.load()` fails on a cut-off PNG or JPEG);
- the wrong mode: colour (an RGB image whose channels are not all equal) for 1-channel data, an alpha channel that
  is not fully opaque, or a mode other than 1-bit, 8-bit grey, RGB, RGBA or palette. Colour is never turned grey
  in silence: that would score a different image from the one the model made. Grey images (and RGB ones with
  R = G = B) are fine for either kind of data, replicated to 3 channels where needed. Palette images are read
  through their palette (exact, lossless). 16-bit and float images (modes I;16, I, F) are refused rather than
  clipped or rescaled to 8 bits, since which of those the writer meant cannot be told; CMYK, YCbCr, LAB and HSV
  are refused too.

`on_bad="skip"` leaves the bad files out and returns their problems for the caller to log; `on_bad="stop"`
raises `BadImageError` naming the first. `check_image_folder` is the cheap existence check (no decoding) an entry
point can make before its heavy imports. As in torchvision's `ImageFolder`, files are picked by suffix; the
reasons in parentheses are PIL's own errors where it gives one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from genlab.checks import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ON_BAD = ("skip", "stop")

# PIL mode -> the mode it is read in: 1-bit and 8-bit grey as grey, palette through its palette (with alpha,
# so that a transparent palette entry is seen); modes not listed are refused.
_READ_MODES = {"1": "L", "L": "L", "LA": "LA", "P": "RGBA", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA"}


class BadImageError(ConfigError):
    """A folder of images that cannot be scored as asked: missing, empty, or holding bad files."""


class _FileProblemError(Exception):
    """Why one file cannot be used: a kind (`truncated`, ...) and a detail."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind} ({detail})")
        self.kind = kind


def check_image_folder(folder: str | Path) -> list[Path]:
    """The image files of `folder` sorted by name, without opening them; BadImageError if it is missing or empty."""
    folder = Path(folder)
    if not folder.exists():
        raise BadImageError(f"eval.fake_dir={folder}: no such folder")
    if not folder.is_dir():
        raise BadImageError(f"eval.fake_dir={folder}: not a folder")
    files = [p for p in folder.iterdir() if p.is_file()]
    paths = sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
    if not paths:
        ignored = f"; {len(files)} other files ignored" if files else ""
        raise BadImageError(f"eval.fake_dir={folder} holds no images ({', '.join(IMAGE_SUFFIXES)}){ignored}")
    return paths


def _one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _decode(path: Path, height: int, width: int) -> tuple[np.ndarray, str]:
    """The pixels of `path` as uint8 (H, W, K), K = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA), and the file's PIL mode."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise _FileProblemError("unreadable", "not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _FileProblemError("unreadable", _one_line(e)) from None
    with img:
        if img.size != (width, height):  # from the header: no decoding needed
            raise _FileProblemError(
                "wrong size", f"{img.size[0]}x{img.size[1]}, the data's images are {width}x{height}"
            )
        if img.mode not in _READ_MODES:
            raise _FileProblemError("wrong mode", f"{img.mode}; 8-bit grey, RGB, RGBA or palette images are read")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise _FileProblemError("truncated", _one_line(e)) from None
        mode = img.mode
        array = np.asarray(img.convert(_READ_MODES[mode]))
    return array.reshape(height, width, -1), mode


def _to_channels(array: np.ndarray, mode: str, channels: int) -> np.ndarray:
    """uint8 (H, W, K) as the data's (C, H, W): alpha dropped if opaque, grey replicated, colour kept as colour."""
    import numpy as np

    if array.shape[2] in (2, 4):  # alpha is the last channel
        if (array[..., -1] != 255).any():
            raise _FileProblemError("wrong mode", f"{mode} with an alpha channel that is not fully opaque")
        array = array[..., :-1]
    if array.shape[2] == 3 and channels == 1:
        if not ((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()):
            raise _FileProblemError("wrong mode", f"colour ({mode}), the data's images are grey")
        array = array[..., :1]
    if array.shape[2] == 1 and channels == 3:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _read_good(
    paths: list[Path], image_shape: tuple[int, int, int], limit: int | None
) -> tuple[list[np.ndarray], list[tuple[str, _FileProblemError]], int]:
    """(uint8 (C, H, W) arrays of the first `limit` good files, problem lines, number of files read)."""
    channels, height, width = image_shape
    arrays, problems, read = [], [], 0
    for path in paths:
        if limit is not None and len(arrays) == limit:
            break
        read += 1
        try:
            arrays.append(_to_channels(*_decode(path, height, width), channels))
        except _FileProblemError as problem:
            problems.append((path.name, problem))
    return arrays, problems, read


def _check_arguments(image_shape: tuple[int, int, int], limit: int | None, on_bad: str) -> None:
    if on_bad not in ON_BAD:
        raise ValueError(f"eval.on_bad_file={on_bad!r}: not one of {', '.join(ON_BAD)}")
    if len(image_shape) != 3 or image_shape[0] not in (1, 3):
        raise ValueError(f"image_shape={tuple(image_shape)}: expected (C, H, W) with C = 1 or 3")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: expected None (every image) or at least 1")


def _stop_message(lines: list[str], read: int) -> str:
    """One line: the first bad file, how many more there are, and how to leave them out."""
    more = len(lines) - 1
    if more:
        others = f"{more} more of the {read} files read {'is' if more == 1 else 'are'} bad"
    else:
        others = f"the only bad one of the {read} files read"
    return f"{lines[0]}; {others}; pass eval.on_bad_file=skip to leave bad files out"


def load_image_folder(
    folder: str | Path, image_shape: tuple[int, int, int], limit: int | None = None, on_bad: str = "skip"
) -> tuple[Tensor, list[str]]:
    """uint8 images (N, C, H, W) of `folder`, sorted by file name, and one problem line per bad file.

    `image_shape` is the data's (C, H, W), C = 1 or 3. `limit` counts good images: reading stops once `limit`
    good ones are in, so N <= limit and files after that are not opened. `on_bad` (one of `ON_BAD`): "skip" leaves
    bad files out, "stop" raises BadImageError naming the first bad file. BadImageError too when the folder is
    missing, holds no images, or none of them can be used.
    """
    import numpy as np
    import torch

    _check_arguments(image_shape, limit, on_bad)
    paths = check_image_folder(folder)
    arrays, problems, read = _read_good(paths, image_shape, limit)
    lines = [f"{name}: {problem}" for name, problem in problems]
    if not arrays:
        kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(p.kind for _, p in problems).items())
        shown = "; ".join(lines[:3]) + ("; ..." if len(lines) > 3 else "")
        raise BadImageError(f"eval.fake_dir={folder}: none of its {read} images can be used ({kinds}): {shown}")
    if problems and on_bad == "stop":
        raise BadImageError(_stop_message(lines, read))
    return torch.from_numpy(np.stack(arrays)), lines
