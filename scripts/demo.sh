#!/usr/bin/env bash
# The main job on sample_data/: tune alpha and k on the held-out split, compute the biases,
# search, and evaluate baseline vs NNN on the test split.
set -euo pipefail
cd "$(dirname "$0")/.."
D=sample_data
OUT=${OUT:-demo_out}
mkdir -p "$OUT"

echo "== 1. nnn tune: pick alpha and k on the held-out split (paper grid, 110 cells)"
nnn tune --queries $D/tune_queries.h5 --gallery $D/tune_gallery.h5 --truth $D/tune_truth.npy \
         --reference $D/reference.h5 -o "$OUT/params.json"

echo "== 2. nnn bias: one bias per gallery item from the reference queries (test queries checked for leaks)"
nnn bias $D/gallery.h5 --reference $D/reference.h5 --params "$OUT/params.json" -o "$OUT/bias.h5" \
         --queries $D/queries.h5

echo "== 3. nnn search: debiased top-5 for the test queries (first 2 shown as JSON lines)"
nnn search $D/queries.h5 --gallery $D/gallery.h5 --bias "$OUT/bias.h5" --top-k 5 -o "$OUT/results.h5"
nnn search $D/queries.h5 --gallery $D/gallery.h5 --bias "$OUT/bias.h5" --top-k 3 -o - | head -n 2

echo "== 4. nnn eval: baseline vs NNN on the test split"
nnn eval --queries $D/queries.h5 --gallery $D/gallery.h5 --truth $D/truth.npy --bias "$OUT/bias.h5"

echo "== 5. The paper's comparison on the same split: NNN beside DN, QB-Norm (DIS), inverted softmax and DBNorm"
echo "     (DualIS, DualDIS), each method tuned with its own values on the first half of the held-out split; the"
echo "     second half's gallery items are DBNorm's gallery bank (separate items, as App. A1; never the test"
echo "     gallery); then all are evaluated on the test split with bootstrap 95% intervals, pictures and a report"
python - "$D" "$OUT" <<'PY'
import sys, h5py, numpy as np
d, out = sys.argv[1], sys.argv[2]
truth = np.load(f"{d}/tune_truth.npy")
with h5py.File(f"{d}/tune_gallery.h5") as g, h5py.File(f"{d}/tune_queries.h5") as q:
    half = len(g["embeddings"]) // 2
    keep = np.flatnonzero(truth < half)
    for name, src, rows in (("half_gallery", g, np.arange(half)), ("bank", g, np.arange(half, len(truth))),
                            ("half_queries", q, keep)):
        with h5py.File(f"{out}/{name}.h5", "w") as f:
            f["embeddings"] = src["embeddings"][()][rows]
            f.create_dataset("ids", data=src["ids"][()][rows], dtype=h5py.string_dtype())
np.save(f"{out}/half_truth.npy", truth[keep])
PY
HALF=(--queries "$OUT/half_queries.h5" --gallery "$OUT/half_gallery.h5" --truth "$OUT/half_truth.npy" \
      --reference $D/reference.h5)
nnn tune "${HALF[@]}" -o "$OUT/params_nnn.json" -q
MP=()
for m in dn qbnorm is dbnorm dbnorm_dis; do
  nnn tune --method $m "${HALF[@]}" --gallery-bank "$OUT/bank.h5" -o "$OUT/params_$m.json" --json > /dev/null
  MP+=(--method-params "$OUT/params_$m.json")
done
nnn eval --queries $D/queries.h5 --gallery $D/gallery.h5 --truth $D/truth.npy --reference $D/reference.h5 \
         --params "$OUT/params_nnn.json" --methods baseline,nnn,dn,qbnorm,is,dbnorm,dbnorm_dis \
         --gallery-bank "$OUT/bank.h5" "${MP[@]}" \
         --bootstrap 1000 --plots "$OUT/plots" --report "$OUT/report.html"
echo "pictures in $OUT/plots/, report in $OUT/report.html"

echo "== 6. The reference-size ablation (the paper's Tables A12-A15): NNN tuned and applied with 20% of the reference"
nnn tune --queries $D/tune_queries.h5 --gallery $D/tune_gallery.h5 --truth $D/tune_truth.npy \
         --reference $D/reference.h5 --reference-fraction 0.2 --seed 0 -o "$OUT/params_20.json" -q
nnn bias $D/gallery.h5 --reference $D/reference.h5 --params "$OUT/params_20.json" -o "$OUT/bias_20.h5"
nnn eval --queries $D/queries.h5 --gallery $D/gallery.h5 --truth $D/truth.npy --bias "$OUT/bias_20.h5"
