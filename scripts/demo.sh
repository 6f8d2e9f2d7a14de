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

echo "== 2. nnn bias: one bias per gallery item from the reference queries"
nnn bias --gallery $D/gallery.h5 --reference $D/reference.h5 --params "$OUT/params.json" -o "$OUT/bias.h5"

echo "== 3. nnn search: debiased top-5 for the test queries (first 2 shown as JSON lines)"
nnn search --queries $D/queries.h5 --gallery $D/gallery.h5 --bias "$OUT/bias.h5" --top-k 5 -o "$OUT/results.h5"
nnn search $D/queries.h5 --gallery $D/gallery.h5 --bias "$OUT/bias.h5" --top-k 3 -o - | head -n 2

echo "== 4. nnn eval: baseline vs NNN on the test split"
nnn eval --queries $D/queries.h5 --gallery $D/gallery.h5 --truth $D/truth.npy --bias "$OUT/bias.h5"

echo "== 5. The paper's comparison on the same split: NNN beside DN, QB-Norm (DIS), inverted softmax and DBNorm"
echo "     (DualIS, DualDIS; gallery bank: the held-out split's gallery, as App. A1), each tuned on the held-out"
echo "     split like NNN, with bootstrap 95% intervals, pictures and an HTML report"
for m in dn qbnorm; do
  nnn tune --method $m --queries $D/tune_queries.h5 --gallery $D/tune_gallery.h5 --truth $D/tune_truth.npy \
           --reference $D/reference.h5 -o "$OUT/params_$m.json" --json > /dev/null
done
nnn tune --method dbnorm --queries $D/tune_queries.h5 --gallery $D/tune_gallery.h5 --truth $D/tune_truth.npy \
         --reference $D/reference.h5 --gallery-bank $D/gallery.h5 -o "$OUT/params_dbnorm.json" --json > /dev/null
nnn eval --queries $D/queries.h5 --gallery $D/gallery.h5 --truth $D/truth.npy --reference $D/reference.h5 \
         --params "$OUT/params.json" --methods baseline,nnn,dn,qbnorm,is,dbnorm,dbnorm_dis \
         --gallery-bank $D/tune_gallery.h5 \
         --method-params "$OUT/params_dn.json" --method-params "$OUT/params_qbnorm.json" \
         --method-params "$OUT/params_dbnorm.json" \
         --bootstrap 1000 --plots "$OUT/plots" --report "$OUT/report.html"
echo "pictures in $OUT/plots/, report in $OUT/report.html"
