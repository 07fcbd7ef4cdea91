"""Reading a folder of generated images: good files in name order, every bad kind named, skip and stop."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.image_folder import ON_BAD, BadImageError, check_image_folder, load_image_folder

MNIST = (1, 28, 28)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def grey(value: int, size: int = 28) -> np.ndarray:
    """A uint8 (size, size) image whose pixel (i, j) is value + i + j: distinct per file and not constant."""
    i, j = np.indices((size, size))
    return ((value + i + j) % 256).astype(np.uint8)


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Three good grey PNGs, an RGB one with R = G = B (good), five bad ones, and two ignored non-images."""
    for name, value in [("a2.png", 20), ("a0.png", 0), ("a1.png", 10)]:  # written out of order
        (tmp_path / name).write_bytes(png_bytes(grey(value)))
    rgb_grey = np.repeat(grey(30)[..., None], 3, axis=2)
    (tmp_path / "f_rgb_grey.png").write_bytes(png_bytes(rgb_grey))
    whole = png_bytes(noise((28, 28)))
    (tmp_path / "b_truncated.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "c_text.png").write_text("not an image\n")
    (tmp_path / "d_big.png").write_bytes(png_bytes(grey(0, size=32)))
    (tmp_path / "e_colour.png").write_bytes(png_bytes(noise((28, 28, 3))))
    see_through = np.dstack([grey(40), grey(40), grey(40), np.full((28, 28), 128, np.uint8)])
    (tmp_path / "g_transparent.png").write_bytes(png_bytes(see_through))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "meta.json").write_text("{}")
    return tmp_path


def test_skip_returns_good_images_in_name_order_and_names_each_bad_file(mixed: Path) -> None:
    images, problems = load_image_folder(mixed, MNIST, on_bad="skip")
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 28, 28)
    expected = [grey(0), grey(10), grey(20), grey(30)]  # a0, a1, a2, f_rgb_grey
    for image, want in zip(images, expected, strict=True):
        assert torch.equal(image[0], torch.from_numpy(want))
    assert [line.split(":")[0] for line in problems] == [
        "b_truncated.png",
        "c_text.png",
        "d_big.png",
        "e_colour.png",
        "g_transparent.png",
    ]
    assert problems[0].startswith("b_truncated.png: truncated (image file is truncated")
    assert problems[1] == "c_text.png: unreadable (not an image file)"
    assert problems[2] == "d_big.png: wrong size (32x32, the data's images are 28x28)"
    assert problems[3].startswith("e_colour.png: wrong mode (colour")
    assert problems[4].startswith("g_transparent.png: wrong mode (RGBA with an alpha channel")
    assert all("\n" not in line for line in problems)


def test_stop_raises_naming_the_first_bad_file_and_how_to_skip(mixed: Path) -> None:
    with pytest.raises(BadImageError) as info:
        load_image_folder(mixed, MNIST, on_bad="stop")
    message = str(info.value)
    assert message.startswith("b_truncated.png: truncated (")
    assert "4 more of the 9 files read are bad" in message
    assert "eval.on_bad_file=skip" in message
    assert "\n" not in message


def test_stop_passes_a_folder_without_bad_files(tmp_path: Path) -> None:
    for k in range(3):
        (tmp_path / f"{k}.png").write_bytes(png_bytes(grey(k)))
    images, problems = load_image_folder(tmp_path, MNIST, on_bad="stop")
    assert images.shape == (3, 1, 28, 28) and problems == []


def test_grey_images_are_replicated_for_three_channel_data(tmp_path: Path) -> None:
    (tmp_path / "grey.png").write_bytes(png_bytes(grey(5)))
    colour = noise((28, 28, 3), seed=1)
    (tmp_path / "rgb.png").write_bytes(png_bytes(colour))
    images, problems = load_image_folder(tmp_path, (3, 28, 28))
    assert problems == [] and images.shape == (2, 3, 28, 28)
    assert all(torch.equal(images[0, c], torch.from_numpy(grey(5))) for c in range(3))
    assert torch.equal(images[1], torch.from_numpy(colour).permute(2, 0, 1))


def test_opaque_alpha_and_grey_palette_are_read_sixteen_bit_is_refused(tmp_path: Path) -> None:
    opaque = np.dstack([grey(1), np.full((28, 28), 255, np.uint8)])
    (tmp_path / "a_opaque_la.png").write_bytes(png_bytes(opaque))
    palette = Image.fromarray(grey(2)).convert("P")  # Pillow's default palette holds every grey level
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    (tmp_path / "b_palette.png").write_bytes(buffer.getvalue())
    (tmp_path / "c_16bit.png").write_bytes(png_bytes(grey(3).astype(np.uint16) * 257))
    images, problems = load_image_folder(tmp_path, MNIST)
    assert torch.equal(images[0, 0], torch.from_numpy(grey(1)))
    assert torch.equal(images[1, 0], torch.from_numpy(grey(2)))
    assert len(problems) == 1 and problems[0].startswith("c_16bit.png: wrong mode (I;16")


def test_limit_counts_good_images_and_stops_reading(tmp_path: Path) -> None:
    (tmp_path / "a_bad.png").write_text("x")
    for k in range(1, 4):
        (tmp_path / f"b{k}.png").write_bytes(png_bytes(grey(k)))
    (tmp_path / "c_bad.png").write_text("x")  # after the limit: never opened
    images, problems = load_image_folder(tmp_path, MNIST, limit=2)
    assert images.shape == (2, 1, 28, 28)
    assert torch.equal(images[1, 0], torch.from_numpy(grey(2)))
    assert [line.split(":")[0] for line in problems] == ["a_bad.png"]
    images, _ = load_image_folder(tmp_path, MNIST, limit=10)
    assert len(images) == 3


def test_empty_folder_and_folder_of_non_images(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="holds no images"):
        load_image_folder(tmp_path, MNIST)
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(BadImageError, match=r"holds no images .*1 other files ignored"):
        load_image_folder(tmp_path, MNIST)


def test_every_image_bad_names_the_folder_counts_and_reasons(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("x")
    (tmp_path / "b.png").write_bytes(png_bytes(grey(0, size=32)))
    for on_bad in ON_BAD:
        with pytest.raises(BadImageError) as info:
            load_image_folder(tmp_path, MNIST, on_bad=on_bad)
        message = str(info.value)
        assert f"eval.fake_dir={tmp_path}" in message and "none of its 2 images" in message
        assert "1 unreadable, 1 wrong size" in message and "b.png: wrong size (32x32" in message


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BadImageError, match=f"eval.fake_dir={missing}: no such folder"):
        load_image_folder(missing, MNIST)
    with pytest.raises(BadImageError, match="no such folder"):
        check_image_folder(missing)


def test_bad_on_bad_value_names_it_and_the_valid_ones(mixed: Path) -> None:
    with pytest.raises(ValueError, match="'halt': not one of skip, stop"):
        load_image_folder(mixed, MNIST, on_bad="halt")


def test_check_image_folder_lists_without_decoding(mixed: Path) -> None:
    names = [p.name for p in check_image_folder(mixed)]
    assert names == sorted(names) and "c_text.png" in names and "notes.txt" not in names


def test_module_imports_neither_torch_nor_lightning() -> None:
    code = "import sys, genlab.image_folder; print(sorted({'torch', 'lightning', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
