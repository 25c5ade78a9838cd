"""int8 export of transformer graphs (`shangpin.encoders`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from shangpin.encoders import OnnxRunner, export_onnx
from tests.factories import tiny_bert


def _feed(rng: np.random.Generator, n: int, length: int) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 60, (n, length))
    mask = np.ones_like(ids)
    for row in range(n):  # ragged rows, padded like the stage pads them
        mask[row, rng.integers(3, length + 1) :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_static_int8_rows_do_not_depend_on_their_batch_and_stay_close_to_fp32(tmp_path: Path) -> None:
    import onnx

    model = tiny_bert(vocab_size=60, hidden_size=32, layers=2, heads=4, intermediate_size=64, labels=5)
    rng = np.random.default_rng(0)
    calibration = [_feed(rng, 8, 10) for _ in range(4)]
    fp32 = OnnxRunner(export_onnx(model, tmp_path / "fp32.onnx", quantize=False), threads=1)
    int8_path = export_onnx(model, tmp_path / "int8.onnx", calibration=calibration)
    ops = Counter(node.op_type for node in onnx.load(str(int8_path)).graph.node)
    # Every matmul with weights runs in int8 and returns float; no range is measured at run time.
    assert ops["MatMulIntegerToFloat"] == 2 * 6 + 1
    assert ops["DynamicQuantizeLinear"] == 0 and ops["QLinearMatMul"] == 0
    int8 = OnnxRunner(int8_path, threads=1)

    feed = _feed(rng, 6, 10)
    together = int8(**feed)
    for row in range(6):
        n = int(feed["attention_mask"][row].sum())
        alone = int8(**{k: v[row : row + 1, :n] for k, v in feed.items()})
        np.testing.assert_allclose(alone[0], together[row, :n], atol=1e-5)
    reference = fp32(**feed)
    live = feed["attention_mask"].astype(bool)
    # int8 noise on a random 32-wide model: small against the logits' spread (a wrong zero point or scale
    # clips the negative half or the peaks, and the correlation falls well below this)
    assert np.corrcoef(together[live].ravel(), reference[live].ravel())[0, 1] > 0.995
