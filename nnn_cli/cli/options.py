"""Options declared once and shared by the commands (as sqlite-utils shares its option groups).

Each alias is an ``Annotated`` type; a command lists the aliases it takes, and
:func:`index_options` turns the index group into the jobs' :class:`IndexOptions`.
"""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nnn_cli.errors import ParameterError
from nnn_cli.jobs import EngineOptions, IndexOptions
from nnn_cli.jobs.common import IdsColumns, parse_storage_options


class Metric(str, Enum):
    cosine = "cosine"
    ip = "ip"


class OutFormat(str, Enum):
    h5 = "h5"
    jsonl = "jsonl"


class StreamFormat(str, Enum):
    """``nnn embed -o -``: what goes to stdout."""

    h5 = "h5"
    npy = "npy"


# ---------------------------------------------------------------------------
# Shared options
# ---------------------------------------------------------------------------
MetricOpt = Annotated[
    Metric,
    typer.Option(
        "--metric",
        envvar="NNN_METRIC",
        help="cosine: L2-normalise rows on load; ip: raw inner products (as nnn-retrieval).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", envvar="NNN_QUIET", help="No progress bar or summary on stderr.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", envvar="NNN_THREADS", min=0, help="CPU threads for faiss/BLAS (0: all cores).")
]
BlockOpt = Annotated[
    Optional[int],
    typer.Option(
        "--block-size",
        envvar="NNN_BLOCK_SIZE",
        min=1,
        hidden=True,
        help="Deprecated, no effect: memory is bounded by fixed tiles; use --memory-budget.",
    ),
]
"""Deprecated: accepted (so old cron lines keep working) and ignored with a note; see :func:`block_size_note`."""
AlphaOpt = Annotated[Optional[float], typer.Option("--alpha", "-a", help="Bias weight alpha (paper grid: 0.25..1.5).")]
KOpt = Annotated[Optional[int], typer.Option("--k", "-k", help="Number of nearest reference queries averaged.")]
ParamsOpt = Annotated[Optional[Path], typer.Option("--params", help="params.json from `nnn tune` (gives alpha and k).")]
GalleryOpt = Annotated[str, typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")]
GalleryInputOpt = Annotated[
    Optional[str],
    typer.Option("--gallery", "-g", help="Gallery embeddings (N, d); the same as the positional GALLERY."),
]
QueriesInputOpt = Annotated[
    Optional[str],
    typer.Option("--queries", "-Q", help="Query embeddings (Q, d); the same as the positional QUERIES."),
]
BiasFileOpt = Annotated[Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`.")]
BiasReferenceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--reference", "-r", help="Reference queries, to compute the bias here (with --alpha/--k or --params)."
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Use a bias file even if it records another gallery (content fingerprint) or metric."),
]


IndexOpt = Annotated[
    str,
    typer.Option(
        "--index",
        envvar="NNN_INDEX",
        help="flat (exact), ivf, hnsw, auto (exact unless an index is predicted >= 4x cheaper; says which), "
        "or a faiss index-factory string such as 'IVF4096,SQ8'.",
    ),
]
NlistOpt = Annotated[Optional[int], typer.Option("--nlist", help="IVF lists (default about sqrt(rows)).")]
NprobeOpt = Annotated[
    Optional[int], typer.Option("--nprobe", help="IVF lists probed per query (default 32, or tuned by --recall).")
]
EfSearchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--ef-search",
        help="HNSW efSearch (default max(128, 2k), or tuned by --recall); with --store: the search effort of the "
        "store's ANN index (pgvector hnsw.ef_search and ivfflat.probes, LanceDB nprobes, ef and refine_factor, Qdrant hnsw_ef).",
    ),
]
RecallOpt = Annotated[
    Optional[float],
    typer.Option(
        "--recall",
        help="Tune nprobe/efSearch to reach this top-k recall on a sample of 1000 rows against exact (e.g. 0.95).",
    ),
]
SaveIndexOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--save-index", help="Write the built index (faiss format) and PATH.json for reuse with --load-index."
    ),
]
LoadIndexOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--load-index",
        help="Reuse an index saved with --save-index (only load index files you trust); "
        "its size, dimension and input fingerprint must match.",
    ),
]
MemoryBudgetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--memory-budget",
        envvar="NNN_MEMORY_BUDGET",
        help="Bound resident memory, e.g. 2GB or 512MB: the exact bias streams the reference (and gallery) in blocks.",
    ),
]
GalleryIdsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--gallery-ids", help="Ids of the gallery rows: .txt (one a line), .npy, .json or .parquet (--ids-column)."
    ),
]
QueryIdsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--query-ids", help="Ids of the query rows: .txt (one a line), .npy, .json or .parquet (--ids-column)."
    ),
]
IdsColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ids-column",
        help="Column of the parquet metadata holding the ids, for every input that has parquet metadata "
        "(clip-retrieval folders, --*-ids FILE.parquet; default: the first of image_path, url, key, id, caption); "
        "needs pyarrow. Per input: --gallery-ids-column, --queries-ids-column, --reference-ids-column.",
    ),
]
GalleryIdsColumnOpt = Annotated[
    Optional[str],
    typer.Option("--gallery-ids-column", help="Parquet ids column of the gallery only (overrides --ids-column)."),
]
QueriesIdsColumnOpt = Annotated[
    Optional[str],
    typer.Option("--queries-ids-column", help="Parquet ids column of the queries only (overrides --ids-column)."),
]
ReferenceIdsColumnOpt = Annotated[
    Optional[str],
    typer.Option("--reference-ids-column", help="Parquet ids column of the reference only (overrides --ids-column)."),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        envvar="NNN_ENGINE",
        help="local (this process) or ray (Ray tasks over gallery blocks x reference partitions, byte-identical "
        "to local; inputs/outputs by path or URL: s3://, gs://, file://). Needs the ray extra: .venv/bin/pip install -e '.[ray]' in the checkout.",
    ),
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        envvar="NNN_RAY_ADDRESS",
        help="--engine ray: auto, HOST:PORT or ray://HEAD:10001 of an existing cluster (default: a private local Ray "
        "started for this run and stopped after it).",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="A run folder (any engine): keep the verified blocks an interrupted run finished (inputs, parameters and plan must "
        "match its manifest.json) and compute the rest.",
    ),
]
GpusPerTaskOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-task", min=0, help="--engine ray: GPUs per task (num_gpus); each task then uses its own GPU."
    ),
]
BlockRowsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--block-rows",
        min=1,
        help="Blocked runs (a run folder, --engine ray): gallery (bias) or query (search) rows per task; a multiple of "
        "1024 (default 65536 for bias).",
    ),
]
PartitionRowsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--partition-rows",
        min=1,
        help="Blocked runs: reference (bias) or gallery (search) rows per task; a multiple of 8192 (default 1048576).",
    ),
]
MaxRetriesOpt = Annotated[int, typer.Option("--max-retries", min=0, help="--engine ray: retries of a failed task.")]
IoTimeoutOpt = Annotated[
    Optional[float],
    typer.Option(
        "--io-timeout",
        help="Seconds an object store (s3://, gs://, ...) or a cluster (--address) may take to answer before the "
        "run stops with one line naming the URL or address (default: env NNN_IO_TIMEOUT, else 30).",
    ),
]
StorageOptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option",
        help="URLs (any engine): fsspec storage option KEY=VALUE for URLs (repeatable), e.g. "
        "endpoint_url=http://127.0.0.1:9000 or anon=true.",
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        envvar="NNN_WAIT",
        min=0,
        help="Seconds to wait for another nnn run holding the same bias file or partial embedding; then exit 2 naming it.",
    ),
]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DEVICE_DEFAULT = Device.auto
"""One ``--device`` default for every command: a GPU when one is visible, else the CPU."""
DeviceOpt = Annotated[
    Device,
    typer.Option(
        "--device",
        envvar="NNN_DEVICE",
        help="auto (default): cuda when a GPU is visible, else cpu; cpu; or cuda (falls back to the CPU with a "
        "message when no GPU is found; nnn embed exits 2 instead).",
    ),
]


class Modality(str, Enum):
    text = "text"
    image = "image"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"


class OutDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Objective(str, Enum):
    r1 = "R@1"
    r5 = "R@5"
    r10 = "R@10"


def index_options(
    index: str,
    nlist: Optional[int],
    nprobe: Optional[int],
    ef_search: Optional[int],
    recall: Optional[float],
    save_index: Optional[Path],
    load_index: Optional[Path],
) -> IndexOptions:
    return IndexOptions(index, nlist, nprobe, ef_search, recall, save_index, load_index)


def block_size_note(block_size: Optional[int]) -> str:
    """The deprecation line for ``--block-size`` (empty when it was not given)."""
    if block_size is None:
        return ""
    return (
        "note: --block-size is deprecated and has no effect (memory is bounded by fixed GEMM tiles); "
        "use --memory-budget to bound memory"
    )


def engine_options(
    engine: str,
    address: Optional[str],
    resume: bool,
    gpus_per_task: float,
    block_rows: Optional[int],
    partition_rows: Optional[int],
    max_retries: int,
    storage_option: Optional[list[str]],
    io_timeout: Optional[float] = None,
) -> EngineOptions:
    return EngineOptions(
        engine,
        address,
        resume,
        gpus_per_task,
        block_rows,
        partition_rows,
        max_retries,
        parse_storage_options(storage_option),
        io_timeout,
    )


def one_input(positional: Optional[str], option: Optional[str], flag: str) -> str:
    """An input given as a positional shorthand or as its option (``nnn bias G`` = ``nnn bias --gallery G``)."""
    if positional is not None and option is not None and positional != option:
        raise ParameterError(f"given twice, as {positional!r} and {flag} {option!r}: give one ({flag})")
    value = option if option is not None else positional
    if value is None:
        raise ParameterError(f"missing option ({flag})")
    return value


def ids_columns(
    ids_column: Optional[str],
    gallery: Optional[str] = None,
    queries: Optional[str] = None,
    reference: Optional[str] = None,
) -> IdsColumns | None:
    """The jobs' per-input parquet ids columns from --ids-column and --{gallery,queries,reference}-ids-column."""
    if ids_column is None and gallery is None and queries is None and reference is None:
        return None
    return IdsColumns(ids_column, gallery=gallery, queries=queries, reference=reference)


# ---------------------------------------------------------------------------
# Vector stores (pgvector, LanceDB, Qdrant): `nnn export`, `--store`, `bias --in-place`, `info URI`
# ---------------------------------------------------------------------------
StoreOpt = Annotated[
    Optional[str],
    typer.Option(
        "--store",
        envvar="NNN_STORE",
        help="A vector store made by `nnn export` or `nnn bias --in-place`: postgresql://USER@HOST/DB "
        "(?host=/socket/dir), lancedb:PATH_OR_URL or qdrant:PATH / qdrant:http://HOST:6333.",
    ),
]
TableOpt = Annotated[
    Optional[str], typer.Option("--table", help="Table (LanceDB, PostgreSQL) or collection (Qdrant) in the store.")
]
ColumnOpt = Annotated[str, typer.Option("--column", help="The store's vector column holding the gallery embeddings.")]
IdColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--id-column", help="The store's row key (default: the primary key; LanceDB: 'id'; Qdrant: the point id)."
    ),
]
StoreOptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--store-option",
        help="Object-store option for lancedb:s3://... KEY=VALUE (repeatable), e.g. aws_endpoint=http://127.0.0.1:9000.",
    ),
]

StoreEfSearchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--ef-search",
        help="With --store: the search effort of the store's ANN index (pgvector hnsw.ef_search and ivfflat.probes, "
        "LanceDB nprobes, ef and refine_factor, Qdrant hnsw_ef); higher finds more of the exact top-k, slower. Default: the store's.",
    ),
]
EfSearchListOpt = Annotated[
    Optional[list[int]],
    typer.Option(
        "--ef-search",
        help="With --store: the search effort of the store's ANN index (see `nnn search --help`); repeat it "
        "(--ef-search 10 --ef-search 100) to measure R@K at each effort.",
    ),
]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact",
        help="With --store: ask the store to scan every row instead of its ANN index (the exact debiased top-k).",
    ),
]


def store_only(active: bool, switch: str, given: dict[str, object]) -> None:
    """Vector-store options given where no store is in play are refused (one line naming the option),
    never silently ignored: ``given`` maps each option's flag to its value (None/empty: not given)."""
    if active:
        return
    for flag, value in given.items():
        if value not in (None, [], ()):
            raise ParameterError(f"{flag} applies to a vector store: give {switch} too ({flag})")


def store_options(items: Optional[list[str]]) -> dict:
    """``--store-option KEY=VALUE`` items as a dict of strings (LanceDB's object-store options)."""
    return {key: str(value) for key, value in parse_storage_options(items).items()} if items else {}
