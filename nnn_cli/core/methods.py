"""One registry of comparison methods: name, label, parameters, sweep, scorer.

``nnn eval --methods``, its table and JSON, the HTML report, ``nnn tune --method`` and the CLI's
validation all read this registry, so a new method is one module (a scorer) and one
:func:`register` call::

    register(ComparisonMethod("mine", "My method", params={"gamma": 1.0}, rank=rank_mine,
                              grid={"gamma": (0.5, 1.0, 2.0)}))

``rank(data, values)`` returns the (Q, top_k) gallery rows of every query, best first, ties to the
lower index; ``values`` holds the method's parameters by name (defaults, then the shared flags, then
its parameter file).  ``sweep`` (optional) tunes them; without one, ``nnn tune --method`` ranks every
point of ``grid`` (the product of its axes) and keeps the best Recall@1.  ``baseline`` and ``nnn``
are listed too (their label and order), but are run by the evaluation itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from nnn_cli.core import baselines as bl
from nnn_cli.errors import ParameterError


@dataclass(frozen=True)
class MethodData:
    """What a scorer sees: float32 rows (already normalised for the metric) and the plain rank-1 items."""

    queries: np.ndarray
    gallery: np.ndarray
    reference: np.ndarray | None
    gallery_bank: np.ndarray | None = None
    top1: np.ndarray | None = None
    top_k: int = 10
    block_rows: int = bl.DEFAULT_QUERY_BLOCK


Scorer = Callable[[MethodData, Mapping[str, float]], np.ndarray]
Sweep = Callable[..., dict]


@dataclass(frozen=True)
class ComparisonMethod:
    """One method of ``nnn eval --methods``: how it is named, shown, parameterised, tuned and run."""

    name: str
    label: str
    params: Mapping[str, float] = field(default_factory=dict)
    rank: Scorer | None = None
    grid: Mapping[str, Sequence[float]] = field(default_factory=dict)
    sweep: Sweep | None = None
    needs_reference: bool = True
    uses_gallery_bank: bool = False
    warn_without_gallery_bank: bool = False
    aliases: tuple[str, ...] = ()
    check: Callable[[dict[str, float]], None] | None = None
    query_cost: str = ""

    def values(self, *layers: Mapping[str, float] | None) -> dict[str, float]:
        """This method's parameters: its defaults overlaid by each layer's values for its own names, checked."""
        out = dict(self.params)
        for layer in layers:
            out.update({key: float(v) for key, v in (layer or {}).items() if key in self.params})
        for key, value in out.items():
            if not math.isfinite(value) or value < 0:
                raise ParameterError(
                    f"{self.name}: --{key.replace('_', '-')} must be a finite number >= 0, got {value}"
                )
        if self.check is not None:
            self.check(out)
        return out

    @property
    def tunable(self) -> bool:
        return self.rank is not None and (self.sweep is not None or bool(self.grid))


_REGISTRY: dict[str, ComparisonMethod] = {}


def register(method: ComparisonMethod) -> ComparisonMethod:
    """Add (or replace) a method; its name and aliases become valid everywhere methods are named."""
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> ComparisonMethod:
    return _REGISTRY[resolve(name)]


def names() -> tuple[str, ...]:
    """Every registered name, in table order (baseline, nnn, then the comparison methods)."""
    return tuple(_REGISTRY)


def comparison_names() -> tuple[str, ...]:
    """The methods ``nnn tune --method`` can sweep besides NNN."""
    return tuple(n for n, m in _REGISTRY.items() if m.tunable)


def aliases() -> dict[str, str]:
    return {a: m.name for m in _REGISTRY.values() for a in m.aliases}


def resolve(name: str) -> str:
    """A name or alias -> the registered name; unknown names raise ParameterError."""
    key = str(name).strip().lower()
    key = aliases().get(key, key)
    if key not in _REGISTRY:
        raise ParameterError(f"unknown method {name!r}; choose from {', '.join(names())} (or {', '.join(aliases())})")
    return key


def parse_methods(items: str | Sequence[str]) -> tuple[str, ...]:
    """``"baseline,nnn,dn"`` or ``["baseline", "dn"]`` -> ordered unique names (aliases resolved)."""
    parts = str(items).split(",") if isinstance(items, str) else [str(x) for x in items]
    wanted = [p.strip() for p in parts if p.strip()]
    if not wanted:
        raise ParameterError(f"--methods is empty; choose from {', '.join(names())}")
    return tuple(dict.fromkeys(resolve(n) for n in wanted))


class _Labels(Mapping[str, str]):
    """A live ``{name: label}`` view of the registry (methods registered later appear too)."""

    def __getitem__(self, key: str) -> str:
        return _REGISTRY[key].label

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)


LABELS: Mapping[str, str] = _Labels()


# ---------------------------------------------------------------------------
# The built-in methods
# ---------------------------------------------------------------------------
def _ref(d: MethodData) -> np.ndarray:
    if d.reference is None:
        raise ParameterError("this method needs the reference queries (--reference)")
    return d.reference


def _rank_dn(d: MethodData, p: Mapping[str, float]) -> np.ndarray:
    return bl.rank_dn(d.queries, d.gallery, _ref(d), p["dn_lambda"], d.gallery_bank, d.top_k, d.block_rows)


def _rank_qbnorm(d: MethodData, p: Mapping[str, float]) -> np.ndarray:
    k = int(p["activation_k"])
    return bl.rank_qbnorm(
        d.queries, d.gallery, _ref(d), p["qb_beta"], d.top_k, d.block_rows, activation_k=k, top1=d.top1
    )


def _rank_is(d: MethodData, p: Mapping[str, float]) -> np.ndarray:
    return bl.rank_inverted_softmax(d.queries, d.gallery, _ref(d), p["qb_beta"], d.top_k, d.block_rows)


def _rank_dualis(d: MethodData, p: Mapping[str, float]) -> np.ndarray:
    return bl.rank_dualis(
        d.queries, d.gallery, _ref(d), p["db_beta1"], p["db_beta2"], d.gallery_bank, d.top_k, d.block_rows
    )


def _rank_dualdis(d: MethodData, p: Mapping[str, float]) -> np.ndarray:
    b1, b2, k = p["db_beta1"], p["db_beta2"], int(p["activation_k"])
    return bl.rank_dualdis(
        d.queries, d.gallery, _ref(d), b1, b2, d.gallery_bank, d.top_k, d.block_rows, top1=d.top1, activation_k=k
    )


def _positive_beta(values: dict[str, float]) -> None:
    if values["qb_beta"] <= 0:
        raise ParameterError("--qb-beta must be > 0 (beta 0 gives every gallery item the same score)")


def _db_betas(values: dict[str, float]) -> None:
    if values["db_beta1"] + values["db_beta2"] <= 0:
        raise ParameterError("--db-beta1 and --db-beta2 cannot both be 0 (every gallery item would score the same)")


def _activation(values: dict[str, float]) -> None:
    if values["activation_k"] < 1 or values["activation_k"] != int(values["activation_k"]):
        raise ParameterError(f"--activation-k must be an integer >= 1, got {values['activation_k']}")


def _both(*checks: Callable[[dict[str, float]], None]) -> Callable[[dict[str, float]], None]:
    def run(values: dict[str, float]) -> None:
        for check in checks:
            check(values)

    return run


def _builtin_sweep(name: str) -> Sweep:
    def sweep(data: MethodData, truth, grid=None, progress=None, dense: str = "around", activation_k: int = 1) -> dict:
        from nnn_cli.core.baseline_sweep import tune_baseline

        return tune_baseline(
            name, data.queries, data.gallery, truth, _ref(data), grid, data.gallery_bank,
            data.block_rows, progress, dense, activation_k,
        )  # fmt: skip

    return sweep


def sweep_by_ranking(method: ComparisonMethod, data: MethodData, truth, grid=None, progress=None, **_) -> dict:
    """Every point of the grid's product ranked with ``method.rank``; best Recall@1 (ties: the earlier point)."""
    from nnn_cli.core.metrics import recall_from_topk

    if method.rank is None:
        raise ParameterError(f"{method.name} has no scorer to sweep")
    axes = {**{k: list(v) for k, v in method.grid.items()}, **(grid or {})}
    keys = list(axes)
    points = []
    combos = list(itertools.product(*(axes[k] for k in keys)))
    for n, combo in enumerate(combos, 1):
        values = method.values(dict(zip(keys, combo)))
        idx = method.rank(data, values)
        points.append({**{k: values[k] for k in keys}, **recall_from_topk(idx, truth)})
        if progress:
            progress(n, len(combos))
    best = max(range(len(points)), key=lambda p: (points[p]["R@1"], -p))
    chosen = {k: v for k, v in points[best].items() if not k.startswith("R@")}
    recalls = {k: v for k, v in points[best].items() if k.startswith("R@")}
    return {"method": method.name, "best": chosen, **recalls, "grid": points}


def run_sweep(method: ComparisonMethod, data: MethodData, truth, grid=None, progress=None, **options) -> dict:
    """``method``'s own sweep, or :func:`sweep_by_ranking` over its grid."""
    if method.sweep is not None:
        return method.sweep(data, truth, grid=grid, progress=progress, **options)
    return sweep_by_ranking(method, data, truth, grid, progress)


_BANK_COST = "one GEMM pass over gallery x bank up front (linear in the bank)"
for _method in (
    ComparisonMethod("baseline", "Baseline", needs_reference=False, query_cost="one inner-product search"),
    ComparisonMethod(
        "nnn", "NNN", params={"alpha": 0.75, "k": 16},
        query_cost="one inner-product search over [r, b]; the bias: one pass over gallery x reference "
        "(sublinear with --index)",
    ),
    ComparisonMethod(
        "dn", "DN", params={"dn_lambda": bl.DN_LAMBDA}, rank=_rank_dn, grid=bl.DEFAULT_GRIDS["dn"],
        sweep=_builtin_sweep("dn"), uses_gallery_bank=True,
        query_cost="one inner-product search over the shifted vectors (the reference mean: one pass)",
    ),
    ComparisonMethod(
        "qbnorm", "QB-Norm (DIS)", params={"qb_beta": 20.0, "activation_k": 1.0}, rank=_rank_qbnorm,
        grid=bl.DEFAULT_GRIDS["qbnorm"], sweep=_builtin_sweep("qbnorm"), aliases=("qbnorm_dis",),
        check=_both(_positive_beta, _activation),
        query_cost="two searches a query (plain top-1 to pick the rule, then over [r, b]); " + _BANK_COST,
    ),
    ComparisonMethod(
        "is", "Inverted softmax", params={"qb_beta": 20.0}, rank=_rank_is, grid=bl.DEFAULT_GRIDS["is"],
        sweep=_builtin_sweep("is"), aliases=("qbnorm_is",), check=_positive_beta,
        query_cost="one inner-product search over [r, b]; " + _BANK_COST,
    ),
    ComparisonMethod(
        "dbnorm", "DBNorm (DualIS)", params={"db_beta1": 1.0, "db_beta2": 50.0}, rank=_rank_dualis,
        grid=bl.DEFAULT_GRIDS["dbnorm"], sweep=_builtin_sweep("dbnorm"), uses_gallery_bank=True,
        warn_without_gallery_bank=True, aliases=("dualis",), check=_db_betas,
        query_cost="one inner-product search over [r, b]; " + _BANK_COST + ", for both banks",
    ),
    ComparisonMethod(
        "dbnorm_dis", "DBNorm (DualDIS)", params={"db_beta1": 1.0, "db_beta2": 50.0, "activation_k": 1.0},
        rank=_rank_dualdis, grid=bl.DEFAULT_GRIDS["dbnorm_dis"], sweep=_builtin_sweep("dbnorm_dis"),
        uses_gallery_bank=True, warn_without_gallery_bank=True, aliases=("dualdis",),
        check=_both(_db_betas, _activation),
        query_cost="a plain top-1 search, then over [r, b] when both factors are active, an exhaustive "
        "scan (s * shat, no index) when one is; " + _BANK_COST + ", for both banks",
    ),
):  # fmt: skip
    register(_method)


def rank_method(
    method: str,
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    params: bl.BaselineParams,
    gallery_bank: np.ndarray | None = None,
    top_k: int = 10,
    block_rows: int = bl.DEFAULT_QUERY_BLOCK,
    top1: np.ndarray | None = None,
    progress: bl.ProgressFn | None = None,
) -> np.ndarray:
    """(Q, top_k) ranking of one registered comparison method, with the values of ``params`` it uses."""
    entry = get(method)
    if entry.rank is None:
        raise ParameterError(f"{entry.name} is not a comparison method; choose from {', '.join(comparison_names())}")
    data = MethodData(queries, gallery, reference, gallery_bank, top1, top_k, block_rows)
    out = entry.rank(data, entry.values(asdict(params)))
    if progress:
        progress(len(queries), len(queries))
    return out


def params_for(method: str, params: bl.BaselineParams) -> dict[str, float]:
    """The values of ``params`` (the shared flags) that ``method`` uses, checked."""
    return get(method).values(asdict(params))


def gallery_bank_warning(method_names, gallery_bank) -> str | None:
    """The warning line when a method whose protocol needs a separate gallery bank runs without one."""
    if gallery_bank is None and any(get(m).warn_without_gallery_bank for m in method_names):
        return bl.GALLERY_BANK_WARNING
    return None
