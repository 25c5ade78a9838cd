"""Export a model directory with its encoder graphs as int8 (quantised) or fp32 ONNX: `shangpin export`.

The result is a normal model directory (every stage, the search index and anything else the source holds, copied),
so `shangpin predict`, `Pipeline.load` and `shangpin serve` load it unchanged. Only the transformer graphs change:

- ``extract_attributes/model.onnx`` (the MiniLM span tagger): int8 already when trained with the default
  ``quantize=true`` (copied). An fp32 graph (trained with ``quantize=false``) is quantised statically: int8
  per-channel weights and activation ranges fixed on 512 sequences of calibration products (the training file
  recorded in meta.json, or `calibration`), the recipe training uses. Not dynamically: per-batch ranges made an
  OA-Mine product's extracted values depend on the other products of its batch (docs/BENCHMARKS.md).
- ``categorize/sentence.onnx`` and ``index/encoder/sentence.onnx`` (MiniLM sentence vectors): written as dynamic
  int8 at training time; an fp32 graph is quantised dynamically (per-channel weights), which stays
  batch-independent because the encoder runs one text per call.
- ``recommend_tags``: its keyphrase encoder ran the torch checkpoint; the export writes it as a MiniLM ONNX graph
  (``recommend_tags/sentence.onnx``, dynamic int8 or fp32), which the stage then uses instead of torch.
- ``predict_attributes/image.onnx`` (EfficientNet-Lite0) stays fp32 with either setting: int8 dynamic
  quantisation made it 12x slower (ConvInteger has no fast CPU kernel) and moved its features too far
  (`shangpin.images`).

With ``quantize="none"`` fp32 graphs are copied and int8 ones re-exported in fp32 from the checkpoint they came
from; where the stage kept no fp32 source (an extraction model trained with ``quantize=true``, a fine-tuned
categoriser encoder) the int8 graph is kept and the report says so.

What was done is recorded in ``pipeline.json`` and in each changed stage's ``meta.json`` under ``"export"``:
format, quantisation, source model, and per graph its precision and size before and after.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shangpin._util import atomic_write
from shangpin.encoders import quantize_onnx, quantized_op_count, resolve_encoder
from shangpin.errors import ConfigError, DataError
from shangpin.storage.artifacts import read_pipeline_meta, write_pipeline_meta

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8", "none")
CALIBRATION_PRODUCTS = 2000
"""Products sampled from the calibration file (the extractor draws its 512 sequences from these)."""
_IMAGE_NOTE = (
    "kept fp32: int8 dynamic quantisation made EfficientNet-Lite0 12x slower (ConvInteger has no fast CPU "
    "kernel) and moved its features too far (cosine 0.85 to fp32); see shangpin/images.py"
)


@dataclass
class GraphExport:
    """One encoder graph of the exported directory.

    Attributes:
        file: path relative to the model directory.
        role: what the graph does ("span tagger", "sentence encoder", ...).
        before, after: "int8", "fp32", or "torch" (before only: the stage ran a torch checkpoint, no graph).
        bytes_before, bytes_after: file sizes (before: the checkpoint's weight file when it was torch).
        quantized_ops: quantisation operators in the exported graph (0 for fp32).
        action: "copied", "quantized (static)", "quantized (dynamic)", "exported fp32", "exported int8" or "kept".
        note: why, where the action is not the one asked for, or what it depends on.
    """

    file: str
    role: str
    before: str
    after: str
    bytes_before: int
    bytes_after: int
    quantized_ops: int
    action: str
    note: str = ""


@dataclass
class ExportReport:
    """What `export_model` wrote."""

    source: Path
    out: Path
    format: str
    quantization: str
    graphs: list[GraphExport] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    exported_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record kept in pipeline.json under "export"."""
        return {
            "format": self.format,
            "quantization": self.quantization,
            "source_model": str(self.source),
            "exported_at": self.exported_at,
            "seconds": round(self.seconds, 2),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "graphs": [asdict(g) for g in self.graphs],
        }

    def summary_lines(self) -> list[str]:
        """Readable lines for the command line: one per graph, then the directory sizes."""
        lines = [
            f"exported {self.source} -> {self.out} (format {self.format}, quantize {self.quantization}) "
            f"in {self.seconds:.1f} s"
        ]
        if not self.graphs:
            lines.append("  no encoder graphs in this model (TF-IDF / USE stages only): copied as it is")
        for g in self.graphs:
            lines.append(
                f"  {g.file}: {g.role}, {g.before} -> {g.after}, "
                f"{_mb(g.bytes_before)} -> {_mb(g.bytes_after)}, {g.action}"
                + (f" ({g.note})" if g.note else "")
            )
        lines.append(f"  model directory {_mb(self.bytes_before)} -> {_mb(self.bytes_after)}")
        return lines


def default_export_dir(model_dir: Path, quantize: str = "int8") -> Path:
    """Where `export_model` writes when no folder is given: a sibling named `<model>-int8` (or `<model>-fp32`
    for ``quantize="none"``)."""
    suffix = "int8" if quantize == "int8" else "fp32"
    return model_dir.with_name(f"{model_dir.name}-{suffix}")


def export_model(
    model_dir: Path,
    out_dir: Path | None = None,
    *,
    format: str = "onnx",
    quantize: str = "int8",
    calibration: Path | None = None,
    force: bool = False,
) -> ExportReport:
    """Copy `model_dir` to `out_dir` with every transformer graph as int8 (``quantize="int8"``) or fp32
    (``"none"``) ONNX; see the module docstring for what happens to each graph.

    Args:
        out_dir: the new model directory; default `default_export_dir(model_dir, quantize)`.
        calibration: products (any file `shangpin predict` reads) for the static ranges of an fp32 extraction
            graph; default the training file recorded in the stage's meta.json.
        force: replace `out_dir` if it exists.

    The directory is built beside `out_dir` and renamed into place, so a failed export leaves nothing behind.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"unknown export format '{format}': expected one of {', '.join(FORMATS)}; use --format onnx"
        )
    if quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"unknown quantisation '{quantize}': expected one of {', '.join(QUANTIZATIONS)} "
            "(int8 = quantised ONNX graphs, none = fp32); use --quantize int8 or --quantize none"
        )
    meta = read_pipeline_meta(model_dir)
    out = out_dir if out_dir is not None else default_export_dir(model_dir, quantize)
    src, dst = model_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ConfigError(
            f"the export folder {out} is the model directory {model_dir} or inside it; "
            "choose an --out outside the model directory"
        )
    if out.exists() and not force:
        raise ConfigError(
            f"the export folder {out} exists; pass --force to replace it, or choose another --out"
        )
    t0 = time.perf_counter()
    report = ExportReport(
        source=src,
        out=out,
        format=format,
        quantization=quantize,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        # Leftovers of an interrupted save (.<stage>.tmp / .old) are not part of the model.
        shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns(".*.tmp", ".*.old"))
        report.bytes_before = _dir_bytes(tmp)
        stage_graphs: dict[str, list[GraphExport]] = {}
        with _quiet():
            for kind in meta.get("stages", []):
                handler = _HANDLERS.get(kind)
                if handler is None:
                    continue
                stage_meta = json.loads((tmp / kind / "meta.json").read_text(encoding="utf-8"))
                graphs = handler(tmp, kind, stage_meta, quantize, calibration)
                if graphs:
                    stage_graphs[kind] = graphs
                    report.graphs += graphs
            if (tmp / "index" / "encoder" / "sentence.onnx").is_file():
                report.graphs += _sentence_graph(
                    tmp,
                    "index/encoder",
                    "search query encoder (MiniLM)",
                    quantize,
                    source="",
                    no_source_note="",
                    max_length=96,
                )
        report.bytes_after = _dir_bytes(tmp)
        report.seconds = time.perf_counter() - t0
        record = report.to_dict()
        for kind, graphs in stage_graphs.items():
            _record_stage(tmp / kind, record, graphs)
        meta["export"] = record
        write_pipeline_meta(tmp, meta)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s in %.1f s", model_dir, out, report.seconds)
    return report


# --------------------------------------------------------------------------- per-stage graphs

_Handler = Callable[[Path, str, dict[str, Any], str, Path | None], list[GraphExport]]


def _extract_graphs(
    root: Path, kind: str, meta: dict[str, Any], quantize: str, calibration: Path | None
) -> list[GraphExport]:
    """The span tagger: copy, quantise statically (fp32 -> int8) or keep (int8 without an fp32 source)."""
    folder = root / kind
    graph = folder / "model.onnx"
    before, size = _precision(graph), graph.stat().st_size
    role = "span tagger (MiniLM)"
    if quantize == "none" or before == "int8":
        note = ""
        if quantize == "none" and before == "int8":
            note = (
                "no fp32 source: the stage was trained with quantize=true and kept only its int8 graph; "
                "retrain with --set quantize=false for an fp32 model"
            )
        return [_graph(root, graph, role, before, size, "copied" if not note else "kept", note)]
    from shangpin.stages.extract_attributes import AttributeExtractor

    data = _calibration_file(meta, calibration, kind)
    stage = AttributeExtractor.load(folder)
    products = _sample_products(data, stage.seed, kind)
    feeds = stage.calibration_feeds(products)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        quantized = Path(tmp) / "model.onnx"
        quantize_onnx(graph, quantized, feeds)
        shutil.move(quantized, graph)
    note = f"static activation ranges from {sum(len(f['input_ids']) for f in feeds)} sequences of {data}"
    return [_graph(root, graph, role, before, size, "quantized (static)", note)]


def _categorize_graphs(
    root: Path, kind: str, meta: dict[str, Any], quantize: str, calibration: Path | None
) -> list[GraphExport]:
    """The MiniLM sentence encoder of the quality path / prototypes, when the stage has one."""
    if not (root / kind / "sentence.onnx").is_file():
        return []  # TF-IDF only, or USE (numpy, shipped with its package: nothing to export)
    params, train = meta.get("params", {}), meta.get("train", {})
    source: str | None = _checkpoint_source(params.get("encoder", ""))
    note = ""
    if "finetune" in train:
        source, note = None, "the fine-tuned encoder was kept only as int8; retrain for an fp32 one"
    elif source is None:
        note = f"its checkpoint {params.get('encoder')} is gone, so no fp32 re-export"
    return _sentence_graph(
        root, kind, "sentence encoder (MiniLM)", quantize, source=source, no_source_note=note, max_length=96
    )


def _tags_graphs(
    root: Path, kind: str, meta: dict[str, Any], quantize: str, calibration: Path | None
) -> list[GraphExport]:
    """The keyphrase encoder: a torch checkpoint at training time, an ONNX graph after the export."""
    params = meta.get("params", {})
    if int(params.get("keyphrases", 0)) <= 0:
        return []
    source = _checkpoint_source(params.get("encoder", ""))
    return _sentence_graph(
        root,
        kind,
        "keyphrase encoder (MiniLM)",
        quantize,
        source=source,
        no_source_note=f"its checkpoint {params.get('encoder')} is gone; retrain the tags stage",
        max_length=64,  # what KeyphraseExtractor reads
    )


def _attribute_graphs(
    root: Path, kind: str, meta: dict[str, Any], quantize: str, calibration: Path | None
) -> list[GraphExport]:
    graph = root / kind / "image.onnx"
    if not graph.is_file():
        return []
    before = _precision(graph)
    return [
        _graph(
            root,
            graph,
            "image encoder (EfficientNet-Lite0)",
            before,
            graph.stat().st_size,
            "kept",
            _IMAGE_NOTE,
        )
    ]


_HANDLERS: dict[str, _Handler] = {
    "extract_attributes": _extract_graphs,
    "categorize": _categorize_graphs,
    "recommend_tags": _tags_graphs,
    "predict_attributes": _attribute_graphs,
}


def _sentence_graph(
    root: Path,
    rel: str,
    role: str,
    quantize: str,
    *,
    source: str | None,
    no_source_note: str,
    max_length: int,
) -> list[GraphExport]:
    """A `MiniLMSentenceEncoder` graph in `root/rel`: quantised dynamically, re-exported from `source` (a
    checkpoint folder, "" = the shipped MiniLM; None = not available), copied or kept."""
    from shangpin.sentence import MiniLMSentenceEncoder

    folder = root / rel
    graph = folder / MiniLMSentenceEncoder.ONNX_FILE
    if graph.is_file():
        before, size = _precision(graph), graph.stat().st_size
    else:  # the stage ran its checkpoint with torch
        before, size = "torch", _checkpoint_bytes(source)
    want = "int8" if quantize == "int8" else "fp32"
    if before == want:
        return [_graph(root, graph, role, before, size, "copied")]
    if before == "fp32":  # -> int8
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            quantized = Path(tmp) / graph.name
            quantize_onnx(graph, quantized)
            shutil.move(quantized, graph)
        return [_graph(root, graph, role, before, size, "quantized (dynamic)")]
    if source is None:
        if before == "torch":  # nothing to export from: the stage stays as it was
            return [
                GraphExport(
                    graph.relative_to(root).as_posix(), role, before, before, 0, 0, 0, "kept", no_source_note
                )
            ]
        return [_graph(root, graph, role, before, size, "kept", no_source_note)]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        MiniLMSentenceEncoder.export(
            Path(tmp), encoder=source, max_length=max_length, quantize=want == "int8"
        )
        for name in (MiniLMSentenceEncoder.ONNX_FILE, MiniLMSentenceEncoder.TOKENIZER_FILE):
            shutil.move(Path(tmp) / name, folder / name)
    label = source or "the shipped all-MiniLM-L6-v2"
    return [_graph(root, graph, role, before, size, f"exported {want}", f"from {label}")]


# --------------------------------------------------------------------------- helpers


class _DropAdvice(logging.Filter):
    """onnxruntime's quantize_dynamic advises pre-processing on the root logger on every call; our MiniLM graphs
    come straight from torch.onnx.export, which the advice does not concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the tracer warnings of torch.onnx.export, the checkpoint-loading progress bars of transformers
    and onnxruntime's pre-processing advice while exporting: the report says what happened."""
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            except ImportError:  # no torch stack installed: only the fp32 -> int8 paths can run
                pass
            yield
    finally:
        logging.getLogger().removeFilter(advice)


def _graph(
    root: Path, graph: Path, role: str, before: str, size: int, action: str, note: str = ""
) -> GraphExport:
    ops = quantized_op_count(graph)
    return GraphExport(
        file=graph.relative_to(root).as_posix(),
        role=role,
        before=before,
        after="int8" if ops else "fp32",
        bytes_before=size,
        bytes_after=graph.stat().st_size,
        quantized_ops=ops,
        action=action,
        note=note,
    )


def _precision(graph: Path) -> str:
    return "int8" if quantized_op_count(graph) else "fp32"


def _checkpoint_source(encoder: str) -> str | None:
    """The checkpoint a stage's `encoder` parameter names ("" = shipped MiniLM), or None when it is gone."""
    if encoder in ("", "auto", "minilm", "none", "use"):
        return ""
    return encoder if (Path(encoder).expanduser() / "config.json").is_file() else None


def _checkpoint_bytes(source: str | None) -> int:
    if source is None:
        return 0
    try:
        folder = resolve_encoder(source)
    except ConfigError:
        return 0
    return sum(
        f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file()
    )


def _calibration_file(meta: dict[str, Any], calibration: Path | None, kind: str) -> Path:
    if calibration is not None:
        if not calibration.is_file():
            raise ConfigError(
                f"calibration file {calibration}: expected a product file, found none; "
                "pass --calibration with products like the training data",
                stage=kind,
            )
        return calibration
    recorded = meta.get("train", {}).get("data_file")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    raise ConfigError(
        "its graph is fp32 and int8 needs static activation ranges from typical products: expected the "
        f"training file recorded in meta.json ({recorded or 'none recorded'}), found none; pass "
        "--calibration FILE (products like the training data, e.g. the training file)",
        stage=kind,
    )


def _sample_products(path: Path, seed: int, kind: str) -> list[Any]:
    """Up to CALIBRATION_PRODUCTS products of `path`, a uniform sample (reservoir) when it holds more."""
    from shangpin.storage.catalog import read_products

    rng = random.Random(seed)
    sample: list[Any] = []
    for i, product in enumerate(read_products(path, skip_invalid=True)):
        if i < CALIBRATION_PRODUCTS:
            sample.append(product)
        elif (j := rng.randrange(i + 1)) < CALIBRATION_PRODUCTS:
            sample[j] = product
    if not sample:
        raise DataError(
            f"calibration file {path}: expected products, found none; pass --calibration with a product file",
            stage=kind,
        )
    return sample


def _record_stage(folder: Path, record: dict[str, Any], graphs: list[GraphExport]) -> None:
    """Add the export record (with this stage's graphs only) to the stage's meta.json."""
    path = folder / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["export"] = {
        **{k: v for k, v in record.items() if k not in ("graphs", "bytes_before", "bytes_after")},
        "graphs": [asdict(g) for g in graphs],
    }
    if folder.name == "extract_attributes" and any(g.action == "quantized (static)" for g in graphs):
        meta["params"]["quantize"] = True  # the graph it ships is int8 now
    with atomic_write(path) as fh:
        json.dump(meta, fh, indent=2, ensure_ascii=False)


def _move_into_place(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.export-old"
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _files(folder: Path) -> Iterator[Path]:
    return (f for f in folder.rglob("*") if f.is_file())


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in _files(folder))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
