"""Every method's tuned Recall@1 on sample_data beside the released code's, on the same split.

Protocol (what ``scripts/demo.sh`` does too): the held-out split is cut in two; its first half
(queries and their gallery items) tunes every method's settings, its second half's gallery items are
DBNorm's gallery bank (separate "training" items, as the NNN paper's App. A1; never the test gallery).
Each method is then run on the test split with its own tuned values, by ``nnn`` and by the released
code at the same values:

* NNN: ``nnn-retrieval`` 1.0.1 (``NNNRanker``, torch);
* QB-Norm (DIS), inverted softmax, DBNorm (DualIS, DualDIS): the transcriptions in ``tests/oracles/``
  of ``ioanacroi/qb-norm`` and ``Better_Cross_Modal_Retrieval/DBNorm`` (float64);
* DN: Zhou et al.'s ``compute_retrieval.py`` rule, which centres each side by its own *test*
  features' mean (ours centres the queries by the reference mean, as the NNN paper's App. A3).

    .venv/bin/python bench/bench_released.py [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnn_cli.core import methods as registry
from nnn_cli.core.compare import compare_methods
from nnn_cli.core.truth import Truth
from nnn_cli.core.tune import tune_grid
from nnn_cli.data.inputs import open_embeddings
from tests.oracles.dbnorm_oracle import db_norm
from tests.oracles.qbnorm_oracle import inverted_softmax, qb_norm

D = ROOT / "sample_data"
METHODS = ["baseline", "nnn", "dn", "qbnorm", "is", "dbnorm", "dbnorm_dis"]


def load(name):
    return open_embeddings(str(D / f"{name}.h5"), name).read("cosine")


def split():
    tq, tg, tt = load("tune_queries"), load("tune_gallery"), np.load(D / "tune_truth.npy")
    half = len(tg) // 2
    keep = tt < half  # tuning queries whose answer is in the first half
    tune = (tq[keep], tg[:half], Truth.from_array(tt[keep], int(keep.sum()), half))
    test = (load("queries"), load("gallery"), np.load(D / "truth.npy"))
    return tune, test, tg[half:], load("reference")


def tune_all(tune, bank, reference) -> dict:
    q, g, truth = tune
    best = {"nnn": (lambda r: {"alpha": r.alpha, "k": r.k})(tune_grid(q, g, reference, truth))}
    data = registry.MethodData(q, g, reference, bank)
    for m in METHODS[2:]:
        best[m] = registry.run_sweep(registry.get(m), data, truth)["best"]
    return best


def r1(scores_or_idx, truth, is_scores=True) -> float:
    idx = np.argsort(-scores_or_idx, axis=1, kind="stable")[:, 0] if is_scores else scores_or_idx[:, 0]
    return round(float(np.mean(idx == truth)) * 100, 2)


def released(m, p, q, g, truth, reference, bank) -> float:
    s = q.astype(np.float64) @ g.astype(np.float64).T
    s_ref = reference.astype(np.float64) @ g.astype(np.float64).T
    s_bank = bank.astype(np.float64) @ g.astype(np.float64).T
    if m == "baseline":
        return r1(s, truth)
    if m == "nnn":
        with contextlib.redirect_stdout(io.StringIO()):
            import nnn
        ranker = nnn.NNNRanker(nnn.NNNRetriever(g.shape[1]), g, reference, alternate_ks=int(p["k"]), batch_size=256,
                               alternate_weight=float(p["alpha"]))  # fmt: skip
        return r1(np.asarray(ranker.search(q, 10)[1]), truth, is_scores=False)
    if m == "dn":
        lam = p["dn_lambda"]
        return r1((q - lam * q.mean(0)).astype(np.float64) @ (g - lam * g.mean(0)).astype(np.float64).T, truth)
    if m == "qbnorm":
        return r1(qb_norm(s_ref, s, k=int(p.get("activation_k", 1)), beta=p["qb_beta"]), truth)
    if m == "is":
        return r1(inverted_softmax(s_ref, s, beta=p["qb_beta"]), truth)
    dynamic = m == "dbnorm_dis"  # DBNorm's names: its beta1 is the query bank (our db_beta2)
    return r1(db_norm(s_ref, s_bank, s, beta1=p["db_beta2"], beta2=p["db_beta1"], dynamic_normalized=dynamic), truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    tune, (q, g, t), bank, reference = split()
    best = tune_all(tune, bank, reference)
    truth = Truth.from_array(t, len(q), len(g))
    per_method = {m: v for m, v in best.items() if m != "nnn"}
    runs = compare_methods(q, g, truth, METHODS, reference=reference, nnn_alpha=best["nnn"]["alpha"],
                           nnn_k=best["nnn"]["k"], method_params=per_method, gallery_bank=bank)  # fmt: skip
    rows = []
    for m in METHODS:
        p = best.get(m, {})
        theirs = released(m, p, q, g, t, reference, bank)
        rows.append({"method": m, "params": p, "nnn_R@1": runs[m].result.recall["R@1"], "released_R@1": theirs})
    if args.json:
        print(json.dumps(rows))
        return
    print("sample_data test split (1,000 queries x 1,000 gallery; reference 6,000; DBNorm bank: 500 held-out items)")
    print(f"| {'method':<11} | {'tuned on the held-out half':<40} | {'nnn R@1':>7} | {'released R@1':>12} |")
    print(f"|{'-' * 13}|{'-' * 42}|{'-' * 8}:|{'-' * 13}:|")
    for r in rows:
        params = ", ".join(f"{k}={v:g}" for k, v in r["params"].items())
        print(f"| {r['method']:<11} | {params:<40} | {r['nnn_R@1']:>7.2f} | {r['released_R@1']:>12.2f} |")


if __name__ == "__main__":
    main()
