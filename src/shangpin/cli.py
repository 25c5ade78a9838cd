"""Command-line interface: each command parses its options, calls the library and prints; no logic here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from shangpin.stages.base import StageReport

app = typer.Typer(
    name="shangpin",
    help="Turn raw e-commerce listings into structured catalog data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options shared by several commands, defined once.
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model directory (created by 'train').")]
ThresholdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold", help="NAME=SCORE auto-accept threshold of an attribute or task (repeatable)."
    ),
]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Products: .jsonl, .jsonl.gz or .csv.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config (see configs/default.toml).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: stages.<kind>.<key>=value or key=value."),
]
SkipOpt = Annotated[
    bool, typer.Option("--skip-invalid", help="Skip malformed input lines (reported) instead of stopping.")
]
FieldMapOpt = Annotated[
    list[str] | None,
    typer.Option("--field-map", help="Rename an input field: source=target, e.g. name=title."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Products per batch.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=_stderr(), show_path=False, show_time=verbose, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("shangpin").setLevel(logging.INFO if verbose else logging.WARNING)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _db_url(db: str | None) -> str:
    """The --db URL, else SHANGPIN_DB_URL, else sqlite:///shangpin.db."""
    from shangpin.storage.db import default_db_url

    return db or default_db_url()


def _field_map(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected source=target, found '{pair}'", param_hint="--field-map")
        src, dst = pair.split("=", 1)
        out[src.strip()] = dst.strip()
    return out


@app.command()
def train(
    task: Annotated[
        str, typer.Option("--task", "-t", help="What to train: categorize, extract, attributes, tags.")
    ],
    model: ModelOpt,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Labelled products: .jsonl, .jsonl.gz or .csv (optional with --from-reviews).",
        ),
    ] = None,
    from_reviews: Annotated[
        bool,
        typer.Option(
            "--from-reviews",
            help="Also train on the review queue's human decisions in --db (accepted/edited = labels, rejected = "
            "negatives; auto-accepted values are not used).",
        ),
    ] = False,
    db: Annotated[
        str | None, typer.Option("--db", help="Review database for --from-reviews (default SHANGPIN_DB_URL).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    taxonomy: Annotated[
        Path | None,
        typer.Option(
            "--taxonomy",
            help="Taxonomy file or Shopify taxonomy folder, for stages that take one (same as --set taxonomy=FILE).",
        ),
    ] = None,
    skip_invalid: SkipOpt = False,
    field_map: FieldMapOpt = None,
    verbose: VerboseOpt = True,
) -> None:
    """Train one stage on labelled products and add it to the model directory (other stages stay)."""
    from shangpin.train import train as run_train

    _setup_logging(verbose)
    stage = run_train(
        task,
        data,
        model,
        config_path=config,
        overrides=[*(set_ or ()), *([f"taxonomy={taxonomy}"] if taxonomy else [])],
        skip_invalid=skip_invalid,
        field_map=_field_map(field_map),
        reviews_db=_db_url(db) if from_reviews else None,
    )
    info = stage.train_info_
    what = info.get("summary") or f"on {info.get('n_train', '?')} products"
    typer.echo(f"trained '{stage.name}' ({what}) -> {model}/{stage.name}")
    dev = info.get("dev_metrics") or {}
    if dev:
        typer.echo("dev split: " + ", ".join(f"{k} {v:.2f}" for k, v in dev.items() if isinstance(v, float)))


@app.command()
def pretrain(
    data: Annotated[
        list[Path], typer.Option("--data", "-d", help="Unlabelled products (any product file); repeatable.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the new checkpoint.")],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the texts.")] = 1,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: key=value (see shangpin.pretrain.PretrainSettings)."),
    ] = None,
    skip_invalid: SkipOpt = False,
    field_map: FieldMapOpt = None,
    verbose: VerboseOpt = True,
) -> None:
    """Continue masked-language-model training of the encoder on your product texts; train stages from it with
    --set encoder=OUT."""
    from shangpin.pretrain import PretrainSettings
    from shangpin.pretrain import pretrain as run_pretrain

    _setup_logging(verbose)
    settings = PretrainSettings.from_overrides(set_ or (), epochs=epochs)
    info = run_pretrain(data, out, settings, field_map=_field_map(field_map), skip_invalid=skip_invalid)
    held = info["heldout"]
    typer.echo(
        f"pretrained on {info['n_train_texts']} texts ({info['steps']} steps, {info['train_seconds']:.0f} s) -> {out}"
    )
    typer.echo(
        f"held-out MLM loss {held['before']['loss']:.3f} -> {held['after']['loss']:.3f} "
        f"(perplexity {held['before']['perplexity']:.1f} -> {held['after']['perplexity']:.1f}, "
        f"{held['texts']} texts)"
    )


@app.command()
def predict(
    model: ModelOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL, one line per input product.")],
    batch_size: BatchOpt = 1024,
    skip_invalid: SkipOpt = False,
    field_map: FieldMapOpt = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Also store predictions in this database URL (sqlite:///x.db, postgresql://...)."
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="local (this process) or ray (a pool of Ray actors).")
    ] = "local",
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ray actors (--engine ray); default: the cores.")
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option("--chunk-size", min=1, help="Products per resumable chunk; default: the batch size."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the chunks an interrupted run left in OUT.parts/.")
    ] = False,
    auto_accept: Annotated[
        float | None,
        typer.Option(
            "--auto-accept",
            help="With --db: store suggestions scoring at least this as accepted (default: all wait for review).",
        ),
    ] = None,
    threshold: ThresholdOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run every stage of the model over a product file; a killed run started again resumes where it stopped."""
    from shangpin.predict import predict_file

    _setup_logging(verbose)
    thresholds = None
    if auto_accept is not None or threshold:
        from shangpin.storage.review import Thresholds  # SQLAlchemy: imported only when storing suggestions

        thresholds = Thresholds.parse(auto_accept if auto_accept is not None else 1.01, threshold or [])
    report = predict_file(
        model,
        data,
        out,
        batch_size=batch_size,
        skip_invalid=skip_invalid,
        field_map=_field_map(field_map),
        db_url=db,
        engine=engine,
        workers=workers,
        chunk_size=chunk_size,
        restart=restart,
        thresholds=thresholds,
    )
    typer.echo(report.summary(), err=True)
    for example in report.read.examples:
        typer.echo(f"  skipped: {example}", err=True)


@app.command()
def evaluate(
    model: ModelOpt,
    data: DataOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON instead of tables.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report here.")] = None,
    metrics_file: Annotated[
        Path | None, typer.Option("--metrics-file", help="Write metrics JSON here.")
    ] = None,
    details: Annotated[
        bool, typer.Option("--details", help="Print long tables too (they are always in --report).")
    ] = False,
    batch_size: BatchOpt = 256,
    skip_invalid: SkipOpt = False,
    field_map: FieldMapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score a model against gold products (ExtractGPT counting for extraction; see docs/metrics)."""
    from shangpin.evaluate import evaluate as run_evaluate
    from shangpin.pipeline import Pipeline
    from shangpin.storage.catalog import ReadReport, read_products

    _setup_logging(verbose)
    pipeline = Pipeline.load(model)
    read = ReadReport()
    products = read_products(data, field_map=_field_map(field_map), skip_invalid=skip_invalid, report=read)
    reports = run_evaluate(pipeline, products, batch_size=batch_size)
    metrics = {kind: r.metrics for kind, r in reports.items()}
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        _print_reports(reports, details=details)
    if metrics_file:
        metrics_file.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    if report:
        from shangpin.report import write_report
        from shangpin.storage.artifacts import read_pipeline_meta, read_stage_meta

        info = {
            "pipeline": read_pipeline_meta(model),
            **{k: read_stage_meta(model, k) for k in pipeline.names},
        }
        write_report(
            report,
            reports,
            title=f"shangpin evaluation: {model.name} on {data.name}",
            model_info=info,
            data_info={"file": str(data), "summary": read.summary()},
        )
        typer.echo(f"report written to {report}", err=True)


def _print_reports(reports: dict[str, StageReport], details: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind, rep in reports.items():
        head = Table(title=f"{kind}: metrics", show_header=True)
        head.add_column("metric")
        head.add_column("value", justify="right")
        for k, v in rep.metrics.items():
            head.add_row(k, f"{v:.2f}" if isinstance(v, float) and not v.is_integer() else f"{v:g}")
        console.print(head)
        for title, rows in rep.tables.items():
            if not rows or (len(rows) > 25 and not details):
                if rows:
                    console.print(
                        f"[dim]{kind}: {title}: {len(rows)} rows (--details or --report to see them)[/dim]"
                    )
                continue
            t = Table(title=f"{kind}: {title}")
            for col in rows[0]:
                t.add_column(str(col), justify="right" if isinstance(rows[0][col], int | float) else "left")
            for row in rows:
                t.add_row(*("" if v is None else str(v) for v in row.values()))
            console.print(t)


@app.command()
def extract(
    model: ModelOpt,
    title: Annotated[str, typer.Argument(help="Product title.")],
    category: Annotated[str | None, typer.Option("--category", help="Category path, e.g. 'Shoes'.")] = None,
    description: Annotated[str, typer.Option("--description", help="Product description.")] = "",
) -> None:
    """Extract attribute values from one product; JSON to stdout."""
    out = _run_one(model, "extract_attributes", title=title, description=description, category=category)
    out.setdefault("attributes", {})
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


def _run_one(model: Path, stage: str, title: str, **fields: str | None) -> dict[str, Any]:
    """Run one stage of a model on one product given on the command line; the output contract as a dict."""
    from shangpin.pipeline import Pipeline
    from shangpin.storage.catalog import product_from_dict, product_to_output

    _setup_logging(False)
    from shangpin.errors import ConfigError
    from shangpin.registry import get_stage_class
    from shangpin.storage.artifacts import read_pipeline_meta

    pipeline = Pipeline.load(model, stages=[stage])
    if stage not in pipeline.names:
        raise ConfigError(
            f"{model} has no '{stage}' stage (it has: {', '.join(read_pipeline_meta(model)['stages']) or 'none'}); "
            "add one with "
            f"'shangpin train --task {get_stage_class(stage).task} --data TRAIN.jsonl --model {model}'"
        )
    obj: dict[str, Any] = {"id": "cli", "title": title, **{k: v for k, v in fields.items() if v}}
    product = next(pipeline.pipe([product_from_dict(obj, where="command line")]))
    return product_to_output(product, pipeline.assigns)


@app.command()
def categorize(
    model: ModelOpt,
    title: Annotated[str, typer.Argument(help="Product title.")],
    description: Annotated[str, typer.Option("--description", help="Product description.")] = "",
    breadcrumb: Annotated[
        str | None, typer.Option("--breadcrumb", help="Site breadcrumb, e.g. 'Home > Shoes'.")
    ] = None,
) -> None:
    """Categorise one product; JSON to stdout (path, score, alternatives, levels, abstained)."""
    out = _run_one(model, "categorize", title=title, description=description, breadcrumb=breadcrumb)
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


@app.command()
def tag(
    model: ModelOpt,
    title: Annotated[str, typer.Argument(help="Product title.")],
    description: Annotated[str, typer.Option("--description", help="Product description.")] = "",
) -> None:
    """Recommend tags for one product; JSON to stdout (tags best first with "selected", and "new_tags")."""
    out = _run_one(model, "recommend_tags", title=title, description=description)
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


@app.command()
def taxonomy(
    source: Annotated[
        Path, typer.Argument(help="Taxonomy file (Shopify, Google, Best Buy, paths) or Shopify folder.")
    ],
    query: Annotated[str | None, typer.Argument(help="A category path or id to look up.")] = None,
    locale: Annotated[str | None, typer.Option("--locale", help="Shopify folder: en, zh-CN...")] = None,
) -> None:
    """Summarise a taxonomy, or show one category (id, path, level, ancestors, children, attributes); JSON."""
    from shangpin.taxonomy import Taxonomy

    _setup_logging(False)
    tax = Taxonomy.load(source, locale=locale)
    if query is None:
        out: dict[str, Any] = {
            "name": tax.name,
            "categories": len(tax),
            "leaves": len(tax.leaves()),
            "depth": tax.depth,
            "per_level": {k: len(tax.paths_at_level(k)) for k in range(1, tax.depth + 1)},
        }
    else:
        cat = tax.get(query)
        out = {
            "id": cat.id,
            "path": cat.path,
            "level": cat.level,
            "ancestors": [a.path for a in tax.ancestors(cat.id)],
            "children": [c.path for c in tax.children(cat.id)],
            "attributes": list(tax.attributes_for(cat.id)),
        }
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


@app.command()
def view(
    out: Annotated[Path, typer.Argument(help="Output of 'predict' (JSONL).")],
    data: Annotated[Path | None, typer.Option("--data", "-d", help="The input file, to show titles.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Products to show.")] = 20,
) -> None:
    """Show enriched products as a readable table."""
    from itertools import islice

    from rich.console import Console
    from rich.table import Table

    from shangpin.storage.catalog import read_products

    inputs = {p.product_id: p for p in read_products(data)} if data else {}
    table = Table(title=f"{out.name}: first {limit} products", show_lines=True)
    table.add_column("id")
    table.add_column("title", max_width=50)
    table.add_column("attributes: value -> canonical, score, (flags)")
    table.add_column("category (input or predicted) / tags")
    with open(out, encoding="utf-8") as fh:
        for line in islice(fh, limit):
            row = json.loads(line)
            attrs = "\n".join(_attribute_cell(k, v) for k, v in row.get("attributes", {}).items())
            given = inputs.get(row["id"])
            if "category" in row:
                other = f"{row['category']['path']}  {row['category']['score']:.2f}"
            else:
                other = given.category_path or "" if given else ""
            if row.get("tags"):
                picked = [t["tag"] for t in row["tags"] if t.get("selected", True)] or [row["tags"][0]["tag"]]
                other += ("\n" if other else "") + "tags: " + ", ".join(picked)
            if row.get("new_tags"):
                other += "\nnew: " + ", ".join(t["tag"] for t in row["new_tags"])
            table.add_row(row["id"], given.title if given else "", attrs or "(none found)", other)
    Console().print(table)


@app.command("show-model")
def show_model(model: Annotated[Path, typer.Argument(help="Model directory.")]) -> None:
    """Show what a model directory holds: stages, versions, training data and dev metrics."""
    from shangpin.storage.artifacts import read_pipeline_meta, read_stage_meta

    meta = read_pipeline_meta(model)
    out = {"model": str(model), **meta, "stage_meta": {k: read_stage_meta(model, k) for k in meta["stages"]}}
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))


KOpt = Annotated[int, typer.Option("--k", "-k", min=1, help="Number of results.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="hybrid, bm25 or embedding.")]


@app.command("index")
def index_catalog(
    model: ModelOpt,
    data: DataOpt,
    encoder: Annotated[
        str, typer.Option("--encoder", help="Sentence encoder: use (multilingual) or minilm (English).")
    ] = "use",
    batch_size: BatchOpt = 256,
    skip_invalid: SkipOpt = False,
    field_map: FieldMapOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Build the search index of a catalog under MODEL/index (runs the model's stages first, if any)."""
    from shangpin.search import build_index
    from shangpin.storage.catalog import ReadReport

    _setup_logging(verbose)
    read = ReadReport()
    meta = build_index(
        model,
        data,
        encoder=encoder,
        batch_size=batch_size,
        field_map=_field_map(field_map),
        skip_invalid=skip_invalid,
        report=read,
    )
    typer.echo(read.summary(), err=True)
    keys = ("size", "encoder", "vocabulary", "stages", "build_seconds", "index_bytes", "data_sha256")
    typer.echo(json.dumps({"index": str(model / "index"), **{k: meta[k] for k in keys}}, indent=2))


@app.command()
def similar(
    model: ModelOpt,
    product_id: Annotated[str, typer.Argument(help="Id of an indexed product.")],
    k: KOpt = 10,
    mode: ModeOpt = "hybrid",
) -> None:
    """Products similar to an indexed product; JSON to stdout."""
    from shangpin.search import SearchIndex, hit_to_dict

    _setup_logging(False)
    hits = SearchIndex.load(model).similar(product_id, k, mode=mode)
    out = {"id": product_id, "mode": mode, "results": [hit_to_dict(h) for h in hits]}
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


@app.command()
def search(
    model: ModelOpt,
    query: Annotated[str, typer.Argument(help="Search query, any language the index's encoder reads.")],
    k: KOpt = 10,
    mode: ModeOpt = "hybrid",
) -> None:
    """Products matching a text query; JSON to stdout."""
    from shangpin.search import SearchIndex, hit_to_dict

    _setup_logging(False)
    hits = SearchIndex.load(model).search(query, k, mode=mode)
    out = {"query": query, "mode": mode, "results": [hit_to_dict(h) for h in hits]}
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


# ---------------------------------------------------------------------------------------- ranking (issue 6)
rank_app = typer.Typer(
    help="Attribute importance learned from behaviour, and session re-ranking with explanations.",
    no_args_is_help=True,
)
app.add_typer(rank_app, name="rank")
EventsOpt = Annotated[
    list[Path] | None, typer.Option("--events", "-e", help="Event log(s): JSONL, CSV or UBI records.")
]
CatalogOpt = Annotated[
    Path, typer.Option("--catalog", help='Products with "category" and "attributes" (JSONL or CSV).')
]


RankDbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Read the events stored by 'shangpin events ingest' from this database URL."),
]


@rank_app.command("train")
def rank_train(
    catalog: CatalogOpt,
    model: ModelOpt,
    events: EventsOpt = None,
    db: RankDbOpt = None,
    set_: SetOpt = None,
    skip_invalid: SkipOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn per-category attribute importance from a catalog and its behaviour log (files or database)."""
    from shangpin.ranking import train_ranker

    _setup_logging(verbose)
    ranker = train_ranker(
        catalog, model, events=events or [], db_url=db, overrides=set_ or [], skip_invalid=skip_invalid
    )
    info = ranker.train_info_
    typer.echo(
        f"trained ranking on {info['n_sessions']} sessions, {info['n_events']} events, {info['n_choices']} "
        f"choices, {len(ranker.catalog_.nodes)} categories in {info['seconds']} s -> {model}"
    )


@rank_app.command("update")
def rank_update(
    model: ModelOpt,
    events: EventsOpt = None,
    db: RankDbOpt = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="Updated catalog (same categories).")
    ] = None,
    skip_invalid: SkipOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Fold new events into a trained ranking without retraining on old ones (old behaviour decays).

    With --db, the events stored after the newest event the model has seen are read.
    """
    from shangpin.ranking import update_ranker

    _setup_logging(verbose)
    ranker = update_ranker(model, events=events or [], db_url=db, catalog=catalog, skip_invalid=skip_invalid)
    info = ranker.train_info_
    typer.echo(f"updated ranking: {info['n_sessions']} sessions so far, update {info['updates']} -> {model}")


@rank_app.command("importance")
def rank_importance(
    model: ModelOpt,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write {category: {attribute: weight}} JSON.")
    ] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="Print the facet order of one category.")
    ] = None,
) -> None:
    """Attribute weights per category node (each sums to 1); the facet order is the attributes by weight."""
    from shangpin.ranking import load_ranker, write_importance

    ranker = load_ranker(model)
    if out is not None:
        importance = write_importance(ranker, out)
        typer.echo(f"wrote importance for {len(importance)} categories to {out}", err=True)
    if category is not None:
        stats = ranker.node_stats()
        node = ranker.catalog_.resolve(category)
        path = ranker.catalog_.nodes[node] if node is not None else category
        facets = ranker.facets(category)
        typer.echo(f"{path} ({stats.get(path, {}).get('sessions', 0)} sessions)")
        for name, weight in facets:
            typer.echo(f"  {weight:6.3f}  {name}")
    elif out is None:
        typer.echo(json.dumps(ranker.importance(), ensure_ascii=False, indent=2))


@rank_app.command("predict")
def rank_predict(
    model: ModelOpt,
    requests: Annotated[
        Path, typer.Option("--requests", "-r", help="JSONL: {id, category, session_events, candidates}.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL answers: {id, ranking, explanations}.")],
    skip_invalid: SkipOpt = False,
) -> None:
    """Re-rank each request's candidates by the preferences its session revealed, with explanations."""
    from shangpin.ranking import predict_requests

    _setup_logging(False)
    summary = predict_requests(model, requests, out, skip_invalid=skip_invalid)
    typer.echo(
        f"ranked {summary['requests']} requests -> {out} (p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        f"{', skipped ' + str(summary['skipped']) if summary['skipped'] else ''})",
        err=True,
    )


@rank_app.command("evaluate")
def rank_evaluate(
    model: ModelOpt,
    requests: Annotated[Path, typer.Option("--requests", "-r", help="Ranking requests (JSONL).")],
    answers: Annotated[Path, typer.Option("--answers", "-a", help="JSONL {id, utilities: {product id: u}}.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """NDCG@10 of the model's rankings against known utilities (e.g. from 'shangpin simulate')."""
    from shangpin.ranking import evaluate_requests, load_ranker, read_answers, read_requests

    metrics = evaluate_requests(load_ranker(model), read_requests(requests), read_answers(answers))
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>12}  {value}")


@app.command()
def simulate(
    catalog: CatalogOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Simulated events (JSONL).")],
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Hidden weights JSON [OUT.weights.json].")
    ] = None,
    requests: Annotated[
        Path | None, typer.Option("--requests", help="Also write held-out ranking requests (JSONL).")
    ] = None,
    answers: Annotated[
        Path | None, typer.Option("--answers", help="Their utilities [REQUESTS.answers.jsonl].")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Simulate shoppers with hidden preferences over a catalog (sessions, position bias, clicks, purchases)."""
    from shangpin.ranking import simulate_files

    _setup_logging(False)
    summary = simulate_files(
        catalog, out, weights_out=weights, requests_out=requests, answers_out=answers, overrides=set_ or []
    )
    typer.echo(json.dumps(summary), err=True)


events_app = typer.Typer(
    help="Behaviour events: ingest logs (user ids stored only as salted hashes) and prune old ones.",
    no_args_is_help=True,
)
app.add_typer(events_app, name="events")
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: SHANGPIN_DB_URL, else sqlite:///shangpin.db)."),
]
SaltFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--salt-file",
        help="Secret salt of the user-id hashes (default .shangpin-salt, created on first use); "
        "SHANGPIN_SALT overrides it.",
    ),
]
RetentionOpt = Annotated[
    float | None,
    typer.Option(
        "--retention-days", envvar="SHANGPIN_RETENTION_DAYS", help="Delete events older than this many days."
    ),
]


@events_app.command("ingest")
def events_ingest(
    files: Annotated[
        list[Path], typer.Argument(help="Event logs: .jsonl, .jsonl.gz or .csv; UBI records too.")
    ],
    db: DbOpt = None,
    skip_invalid: SkipOpt = False,
    salt_file: SaltFileOpt = None,
    retention_days: RetentionOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Store behaviour events (our contract or OpenSearch UBI queries/events); then prune past the retention."""
    from shangpin.storage.events import EventStore, ingest_files, load_salt

    _setup_logging(verbose)
    with EventStore(_db_url(db), salt=load_salt(salt_file)) as store:
        report = ingest_files(files, store, skip_invalid=skip_invalid, retention_days=retention_days)
    for path, read in report.files.items():
        typer.echo(f"{path}: {read.summary()}", err=True)
        for example in read.examples:
            typer.echo(f"  skipped: {example}", err=True)
    typer.echo(report.summary())


@events_app.command("prune")
def events_prune(
    retention_days: Annotated[
        float,
        typer.Option(
            "--retention-days", envvar="SHANGPIN_RETENTION_DAYS", help="Keep this many days of events."
        ),
    ],
    db: DbOpt = None,
) -> None:
    """Delete stored events older than the retention."""
    from shangpin.storage.events import EventStore

    _setup_logging(False)
    with EventStore(_db_url(db)) as store:
        pruned, left = store.prune(retention_days), store.count()
    typer.echo(f"pruned {pruned} events older than {retention_days:g} days; {left} events kept")


@app.command()
def forget(
    user: Annotated[str, typer.Option("--user", help="The user id as it appeared in the event logs.")],
    db: DbOpt = None,
    salt_file: SaltFileOpt = None,
) -> None:
    """Delete every stored event of one user (needs the salt the events were ingested with)."""
    from shangpin.storage.events import EventStore, load_salt

    _setup_logging(False)
    with EventStore(_db_url(db), salt=load_salt(salt_file, create=False)) as store:
        deleted = store.forget_user(user)
    typer.echo(f"deleted {deleted} events of user {user!r}")
    if deleted == 0:
        typer.echo(
            "no events matched: check that the salt (--salt-file or SHANGPIN_SALT) is the one used at ingest",
            err=True,
        )


@app.command()
def serve(
    model: ModelOpt,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Database of keys, suggestions and events (default SHANGPIN_DB_URL or shangpin.db)."
        ),
    ] = None,
    auto_accept: Annotated[
        float,
        typer.Option(
            "--auto-accept", help="Default score at or above which a stored suggestion is accepted."
        ),
    ] = 0.9,
    threshold: ThresholdOpt = None,
    rate_limit: Annotated[
        float,
        typer.Option("--rate-limit", help="Requests per second per API key (bursts of 2x); 0 = no limit."),
    ] = 100.0,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest request body in bytes (413 above).")
    ] = 8 * 2**20,
    max_products: Annotated[
        int, typer.Option("--max-products", help="Products per enrichment request.")
    ] = 256,
    salt_file: Annotated[
        Path | None, typer.Option("--salt-file", help="Salt of user-id hashes for POST /v1/events.")
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve a model over HTTP (FastAPI; OpenAPI docs at /docs). SHANGPIN_AUTH=off disables API keys (demos)."""
    import uvicorn

    from shangpin.service import ServiceSettings, auth_enabled, create_app
    from shangpin.storage.review import Thresholds

    _setup_logging(verbose)
    settings = ServiceSettings(
        model_dir=model,
        db_url=db,
        auth=auth_enabled(),
        max_body_bytes=max_body,
        max_products=max_products,
        rate_limit=rate_limit,
        thresholds=Thresholds.parse(auto_accept, threshold or []),
        salt_file=salt_file,
    )
    application = create_app(settings)
    typer.echo(
        f"serving {model} on http://{host}:{port}: review workbench http://{host}:{port}/ui, "
        f"API docs http://{host}:{port}/docs",
        err=True,
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info" if verbose else "warning",
        # Longer than clients' pools keep idle connections: a request racing the server's close is an error.
        timeout_keep_alive=75,
    )


keys_app = typer.Typer(help="API keys of the service: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option("--scope", help="read, write or admin.")] = "read",
    name: Annotated[
        str | None, typer.Option("--name", help="Who or what uses the key (shown in the audit).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Create a key; its token is printed once (stdout) and stored only as a hash."""
    from shangpin.storage.keys import KeyStore

    with KeyStore(_db_url(db)) as store:
        key, token = store.create(scope, name)
    typer.echo(
        f"created key {key.prefix} (scope {key.scope}); keep the token, it is not shown again:", err=True
    )
    typer.echo(token)


@keys_app.command("list")
def keys_list(db: DbOpt = None) -> None:
    """List keys (prefix, scope, name, created, revoked); tokens are never shown."""
    from shangpin.storage.keys import KeyStore

    with KeyStore(_db_url(db)) as store:
        for key in store.list():
            state = "revoked" if key.revoked else "active"
            typer.echo(
                f"{key.prefix}\t{key.scope}\t{state}\t{key.created_at:%Y-%m-%d %H:%M}\t{key.name or ''}"
            )


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (the part after 'sp_' in its token).")],
    db: DbOpt = None,
) -> None:
    """Revoke a key; the service stops accepting it within 30 s (its key cache)."""
    from shangpin.storage.keys import KeyStore

    with KeyStore(_db_url(db)) as store:
        key = store.revoke(prefix)
    typer.echo(f"revoked key {key.prefix} (scope {key.scope})", err=True)


@app.command()
def export(
    model: ModelOpt,
    format_: Annotated[str, typer.Option("--format", help="Graph format of the export: onnx.")] = "onnx",
    quantize: Annotated[
        str, typer.Option("--quantize", help="int8 (quantised ONNX graphs) or none (fp32 ONNX graphs).")
    ] = "int8",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="New model directory (default: MODEL-int8, or MODEL-fp32 for none)."
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="Products for the static int8 ranges of an fp32 extraction model (default: its training file).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write a copy of a model directory whose encoder graphs run as int8 (or fp32) ONNX."""
    from shangpin.export import export_model

    _setup_logging(verbose)
    report = export_model(model, out, format=format_, quantize=quantize, calibration=calibration, force=force)
    typer.echo("\n".join(report.summary_lines()))


def main() -> None:
    """Entry point: translate user-fixable errors into 'Error: ...' and exit codes (2 for config/usage)."""
    from shangpin.errors import ConfigError, ShangpinError

    try:
        app(standalone_mode=False)
    except ShangpinError as exc:
        # Plain write: a rich console would wrap the message, and people grep and copy these lines.
        sys.stderr.write(f"Error: {exc.message}\n")
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


def _attribute_cell(name: str, v: dict[str, Any]) -> str:
    """One attribute of the output contract as a line of the `view` table."""
    text = f"{name}: {v.get('value')}"
    if v.get("canonical"):
        text += f" -> {v['canonical']}"
    text += f"  {v['score']:.2f}"
    flags = [f for f in ("predicted", "rule") if v.get("source") == f]
    flags += [f for f in ("conflict", "rejected") if v.get(f)]
    if v.get("rule") and v.get("source") != "rule":
        flags.append("rule")
    return text + (f"  ({', '.join(flags)})" if flags else "")
