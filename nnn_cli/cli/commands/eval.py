"""`nnn eval`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import (
    AlphaOpt,
    BiasFileOpt,
    BiasReferenceOpt,
    BlockOpt,
    EfSearchListOpt,
    ExactOpt,
    ForceOpt,
    GalleryIdsColumnOpt,
    GalleryIdsOpt,
    GalleryOpt,
    IdsColumnOpt,
    IoTimeoutOpt,
    JsonOpt,
    KOpt,
    Metric,
    MetricOpt,
    ParamsOpt,
    QueriesIdsColumnOpt,
    QueryIdsOpt,
    QuietOpt,
    StoreOpt,
    StoreOptionOpt,
    TableOpt,
    ThreadsOpt,
    block_size_note,
    ids_columns,
    store_only,
    store_options,
)
from nnn_cli.cli.render import note_printer, print_json, progress_bar, render_eval_table, render_methods_table
from nnn_cli.jobs.eval import method_defaults, method_names

DEFAULTS = method_defaults()


def comparison_methods() -> list[str]:
    return [m for m in method_names() if m not in ("baseline", "nnn")]


EPILOG = (
    "Examples:\n\n"
    "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --bias bias.h5\n\n"
    "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --reference ref.h5 --alpha 0.75 --k 16 --json\n\n"
    "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --methods baseline\n\n"
    "  nnn eval -Q q.h5 -g g.h5 -t truth.npy -r ref.h5 --params params.json "
    "--methods baseline,nnn,dn,qbnorm,dbnorm,dbnorm_dis --bootstrap 1000 --plots pics --report report.html\n\n"
    "  nnn eval -Q q.h5 -g g.h5 -t truth.npy --bias bias.h5 --store lancedb:./vectors --table items"
)


@handle_errors
def eval_cmd(
    queries: Annotated[str, typer.Option("--queries", "-Q", help="Query embeddings (Q, d).")],
    gallery: GalleryOpt,
    truth: Annotated[
        str, typer.Option("--truth", "-t", help="Ground truth: .npy (Q,) or (P, 2), .h5 'truth', or .csv/.tsv of ids.")
    ],
    bias: BiasFileOpt = None,
    reference: BiasReferenceOpt = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = None,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            envvar="NNN_METHODS",
            help="Comma list of: baseline, nnn, dn, qbnorm (QB-Norm dynamic inverted softmax), is (plain inverted softmax; "
            "alias qbnorm_is), dbnorm (DualIS), dbnorm_dis (DualDIS); baseline always runs.",
        ),
    ] = "baseline,nnn",
    dn_lambda: Annotated[
        float,
        typer.Option(
            "--dn-lambda", help="DN: weight of the subtracted reference means (Zhou et al.'s code and paper: 0.25)."
        ),
    ] = DEFAULTS["dn_lambda"],
    qb_beta: Annotated[
        float, typer.Option("--qb-beta", help="QBNorm: inverse temperature beta of the querybank softmax.")
    ] = DEFAULTS["qb_beta"],
    db_beta1: Annotated[
        float,
        typer.Option(
            "--db-beta1",
            help="DBNorm: beta1 of the gallery-bank factor (NNN paper App. A1 naming; DBNorm's code calls it beta2). "
            "0 = the inverted softmax over the query bank.",
        ),
    ] = DEFAULTS["db_beta1"],
    db_beta2: Annotated[
        float, typer.Option("--db-beta2", help="DBNorm: beta2 of the query-bank factor (DBNorm's code calls it beta1).")
    ] = DEFAULTS["db_beta2"],
    gallery_bank: Annotated[
        Optional[str],
        typer.Option(
            "--gallery-bank",
            help="DBNorm gallery-side bank (N', d): separate training items, as in the NNN paper (App. A1). "
            "Default: the gallery itself, with a warning (not the published protocol). No effect on DN rankings.",
        ),
    ] = None,
    activation_k: Annotated[
        int,
        typer.Option(
            "--activation-k",
            min=1,
            help="QB-Norm/DualDIS activation set: items in the top k of some bank row (QB-Norm's k).",
        ),
    ] = 1,
    method_params: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--method-params",
            help="JSON from `nnn tune --method M` (repeatable): its values apply to M only (its 'method' key); "
            'or one file with a section per method, {"methods": {"dbnorm": {...}, "is": {...}}}. They replace '
            "--dn-lambda/--qb-beta/--db-beta1/--db-beta2 for that method.",
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples of the queries for 95% intervals (0: none).")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the bootstrap.")] = 0,
    plots: Annotated[
        Optional[Path],
        typer.Option("--plots", help="Folder to write PNG pictures into (hubness, recall); needs matplotlib."),
    ] = None,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write one self-contained HTML page with tables and pictures.")
    ] = None,
    query_ids: QueryIdsOpt = None,
    gallery_ids: GalleryIdsOpt = None,
    ids_column: IdsColumnOpt = None,
    queries_ids_column: QueriesIdsColumnOpt = None,
    gallery_ids_column: GalleryIdsColumnOpt = None,
    reference_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--reference-fraction",
            help="Use a seeded random share of --reference (the paper's reference-size ablation, Tables A12-A15); "
            "params tuned on a share apply that share by themselves.",
        ),
    ] = None,
    reference_seed: Annotated[
        Optional[int], typer.Option("--reference-seed", help="Seed of --reference-fraction (default 0).")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse (exit 2) when test queries are in the reference set, by id or as near-duplicate rows "
            "(checked against --reference, or the sketch a bias file records); default: warn.",
        ),
    ] = False,
    store: StoreOpt = None,
    table: TableOpt = None,
    io_timeout: IoTimeoutOpt = None,
    store_option: StoreOptionOpt = None,
    ef_search: EfSearchListOpt = None,
    exact: ExactOpt = False,
) -> None:
    """Recall@1/5/10 (percent) and hubness, **baseline and NNN side by side**.

    A query is a hit at K when any of its correct items is in its top K.
    Hubness: N_1 and N_10 (how often each item is in a query's top 1 / top
    10) with Table 3's kurtosis, MAE and max, skewness over all items and as
    DBNorm computes it; plus the rank-1 summary (max, skewness, never retrieved).
    `--methods` adds the paper's comparison methods (DN, QBNorm, DBNorm
    DualIS/DualDIS; they use --reference as their query bank), each timed;
    `--methods baseline` needs neither a bias nor a reference.
    `--bootstrap N` adds 95% intervals ("R@1_ci"...); `--plots`/`--report`
    draw the hubness histogram and write an HTML page.
    """
    store_only(
        store is not None,
        "--store URI",
        {"--table": table, "--store-option": store_option, "--ef-search": ef_search, "--exact": exact or None},
    )
    note = note_printer(quiet or json_out)
    block_note = block_size_note(block_size)
    if block_note:
        note(block_note)
    with progress_bar("eval", quiet) as progress:
        result = jobs.evaluate(
            queries,
            gallery,
            truth,
            bias=bias,
            reference=reference,
            alpha=alpha,
            k=k,
            params=params,
            metric=metric.value,
            threads=threads,
            force=force,
            methods=[m.strip() for m in methods.split(",") if m.strip()],
            method_params=tuple(method_params or ()),
            baseline_params={
                "dn_lambda": dn_lambda,
                "qb_beta": qb_beta,
                "db_beta1": db_beta1,
                "db_beta2": db_beta2,
                "activation_k": activation_k,
            },
            gallery_bank=gallery_bank,
            bootstrap=bootstrap,
            seed=seed,
            plots=plots,
            report=report,
            query_ids=query_ids,
            gallery_ids=gallery_ids,
            ids_column=ids_columns(ids_column, gallery=gallery_ids_column, queries=queries_ids_column),
            reference_fraction=reference_fraction,
            reference_seed=reference_seed,
            strict=strict,
            progress=progress,
            on_note=note,
        ).to_json()
    if store is not None:  # R@K through the store's own index, beside exact NNN
        result.update(
            jobs.store_recall(
                queries,
                gallery,
                truth,
                store,
                table=table or "",
                metric=metric.value,
                force=force,
                query_ids=query_ids,
                gallery_ids=gallery_ids,
                io_timeout=io_timeout,
                storage_options=store_options(store_option),
                ef_search=ef_search,
                exact=exact,
            ).to_json()
        )
        if not json_out:
            from nnn_cli.cli.render import info as show

            about = result["store"]
            for row in about.get("sweep") or [{**about, **result["nnn_store"]}]:
                recalls = ", ".join(f"{key} {row[key]:.2f}" for key in result["nnn_store"])
                effort = (
                    " (exact scan)"
                    if row["exact"]
                    else f" (--ef-search {row['ef_search']})"
                    if row["ef_search"]
                    else ""
                )
                show(f"NNN through {about['uri']} table {table!r}{effort}: {recalls}", False)
    if json_out:
        print_json(result)
    elif {"baseline", "nnn"} <= set(result) and not bootstrap and not any(m in result for m in comparison_methods()):
        render_eval_table(result)
    else:
        render_methods_table(result)
