"""List-major IVF probing, GEMM k-means / IVF build, and the multi-threaded exact top-k accumulator."""

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnn_cli.core import topk as topk_mod
from nnn_cli.core.kmeans import _grouped_sum, assign, spherical_kmeans
from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.topk import RunningTopScores, topk_scores
from nnn_cli.scale.budget import plan_blocks
from nnn_cli.scale.index.build import build_index, load_index, save_index
from nnn_cli.scale.index.choose import IndexChoice, choose_index
from nnn_cli.scale.index.listscan import flat_ivf, list_major_topk, probe_lists
from nnn_cli.scale.index.steps import approximate_reference_topk


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    d = make_hub_data(n_gallery=500, n_queries=10, n_reference=4000, dim=24, n_clusters=6, seed=3)
    return unit(d.gallery), unit(d.reference)


@pytest.fixture(scope="module")
def ivf(data):
    _, ref = data
    return build_index(ref, choose_index("ivf", 500, len(ref), ref.shape[1], 8, nlist=20), "ip")


def faiss_topk(index, queries, k, nprobe):
    index.nprobe = nprobe
    d, i = index.search(queries, k)
    return np.where(i < 0, -np.inf, d)


@pytest.mark.parametrize("nprobe", [1, 3, 20])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 8, 64])
def test_list_major_equals_faiss_ivf_search(data, ivf, nprobe, threads, k):
    gallery, _ = data
    ours = list_major_topk(ivf, gallery, k, nprobe, threads=threads)
    theirs = faiss_topk(ivf, gallery, k, nprobe)
    assert ours.shape == (len(gallery), k)
    assert np.array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(ours)
    np.testing.assert_allclose(ours[finite], theirs[finite], atol=2e-6)
    assert (np.diff(np.where(finite, ours, -10), axis=1) <= 0).all()  # descending


def test_list_major_is_deterministic_across_threads(data, ivf):
    gallery, _ = data
    runs = [list_major_topk(ivf, gallery, 16, 4, threads=t) for t in (1, 2, 4, 1)]
    for other in runs[1:]:
        assert np.array_equal(runs[0], other)


def test_probing_every_list_is_exact(data, ivf):
    gallery, ref = data
    np.testing.assert_allclose(list_major_topk(ivf, gallery, 16, ivf.nlist), topk_scores(gallery, ref, 16), atol=2e-6)


def test_probe_lists_match_faiss_quantizer(data, ivf):
    gallery, _ = data
    ours = probe_lists(ivf, gallery, 5)
    theirs = ivf.quantizer.search(gallery, 5)[1]
    assert (np.sort(ours, axis=1) == np.sort(theirs, axis=1)).mean() > 0.999  # ties aside


@pytest.mark.parametrize("nprobe", [1, 2, 5, 8, 9])
def test_few_probes_pick_the_lists_of_the_gemm_top_k_ties_to_the_lower_list(data, nprobe):
    """Repeated argmax (nprobe <= FEW_PROBES) picks the lists GemmIndex's top-k picks, in the same order,
    duplicated centroids (exact ties) going to the lower list; deeper probes take GemmIndex itself."""
    from nnn_cli.core.topk import GemmIndex, search_blocks

    gallery, ref = data
    cents = unit(ref[:40].copy())
    quantizer = faiss.IndexFlatIP(cents.shape[1])
    quantizer.add(cents)
    ivf = faiss.IndexIVFFlat(quantizer, cents.shape[1], len(cents), faiss.METRIC_INNER_PRODUCT)
    assert np.array_equal(probe_lists(ivf, gallery, nprobe), search_blocks(GemmIndex(cents), gallery, nprobe)[1])
    # exact ties (small integers: every summation order gives the same float): the lower list first
    ints = np.random.default_rng(nprobe).integers(-3, 4, (60, 8)).astype(np.float32)
    cents = ints[:12].copy()
    cents[[5, 9]] = cents[2]
    quantizer = faiss.IndexFlatIP(8)
    quantizer.add(cents)
    ivf = faiss.IndexIVFFlat(quantizer, 8, len(cents), faiss.METRIC_INNER_PRODUCT)
    got = probe_lists(ivf, ints, nprobe)
    scores = ints @ cents.T
    want = np.lexsort((np.broadcast_to(np.arange(12), scores.shape), -scores), axis=1)[:, :nprobe]
    assert np.array_equal(got, want)
    assert (got == 2).any() and (got == 5).sum() <= (got == 2).sum()


def test_too_few_probed_vectors_are_padded_then_recomputed_exactly(data):
    gallery, ref = data
    small = ref[:300]
    index = build_index(small, IndexChoice("ivf", nlist=30), "ip")
    sizes = [index.invlists.list_size(i) for i in range(index.nlist)]
    k = max(sizes) + 1  # more than any single list holds
    padded = list_major_topk(index, gallery, k, 1)
    assert np.isinf(padded[:, -1]).all() and np.isfinite(padded[:, 0]).all()
    index.nprobe = 1
    scores, n_short = approximate_reference_topk(
        index, gallery, lambda rows, groups: topk_scores(rows, small, k, groups=groups), k
    )
    assert n_short == len(gallery)
    np.testing.assert_allclose(scores, topk_scores(gallery, small, k), atol=2e-6)


def test_rows_recomputed_exactly_have_the_same_bytes_however_the_gallery_is_cut(data, monkeypatch):
    """Short rows are recomputed exactly per block of the row grid every engine aligns its calls to, so a
    whole-gallery call (a local chunk) and grid-aligned slices (Ray blocks) give the same bytes: the exact
    engine's rounding for a row depends on the other rows tiled with it."""
    from nnn_cli.scale.index import listscan

    gallery, ref = data
    small = ref[:300]
    index = build_index(small, IndexChoice("ivf", nlist=30), "ip")
    k = max(index.invlists.list_size(i) for i in range(index.nlist)) + 1
    index.nprobe = 1
    monkeypatch.setattr(listscan, "LIST_ROW_BLOCK", 64)
    exact = lambda rows, groups: topk_scores(rows, small, k, groups=groups)  # noqa: E731
    whole, n_short = approximate_reference_topk(index, gallery, exact, k)
    assert n_short == len(gallery) > 3 * 64
    for cut in (64, 128, 192):
        parts = [
            approximate_reference_topk(index, gallery[s : s + cut], exact, k)[0] for s in range(0, len(gallery), cut)
        ]
        assert np.vstack(parts).tobytes() == whole.tobytes(), cut
    np.testing.assert_allclose(whole, topk_scores(gallery, small, k), atol=2e-6)


def test_factory_ivf_flat_uses_list_major_and_other_kinds_do_not(data):
    _, ref = data
    flat = build_index(ref, IndexChoice("factory", factory="IVF16,Flat"), "ip")
    assert flat_ivf(flat) is not None
    for factory in ("IVF16,SQ8", "HNSW8", "PCA16,IVF8,Flat"):
        assert flat_ivf(build_index(ref, IndexChoice("factory", factory=factory), "ip")) is None
    with pytest.raises(ValueError):
        list_major_topk(faiss.IndexFlatIP(ref.shape[1]), ref[:2], 1)


def test_gemm_built_ivf_is_a_plain_faiss_ivf_flat(tmp_path, data, ivf):
    gallery, ref = data
    assert isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
    assert ivf.ntotal == len(ref) and ivf.is_trained
    # every vector sits in the list of its best centroid
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    labels = assign(ref, centroids)[0]
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert np.array_equal(sizes, np.bincount(labels, minlength=ivf.nlist))
    path = save_index(ivf, tmp_path / "ref.faiss", {"side": "reference"})
    again = load_index(path, ref.shape[1], len(ref), "reference")
    assert np.array_equal(list_major_topk(again, gallery, 8, 3), list_major_topk(ivf, gallery, 8, 3))


def test_spherical_kmeans_finds_separated_clusters_deterministically():
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((5, 16)))
    truth = rng.integers(0, 5, 2000)
    points = unit(centres[truth] + 0.05 * rng.standard_normal((2000, 16)).astype(np.float32))
    c1, c2 = spherical_kmeans(points, 5), spherical_kmeans(points, 5)
    assert np.array_equal(c1, c2)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1, atol=1e-5)
    labels = assign(points, c1)[0]
    # each found cluster is one true cluster
    for c in range(5):
        members = truth[labels == c]
        assert len(members) and np.bincount(members).max() == len(members)


def test_spherical_kmeans_reseeds_empty_clusters():
    points = unit(np.repeat(np.eye(3, 8, dtype=np.float32), 20, axis=0))  # 3 distinct points, 6 clusters
    centroids = spherical_kmeans(points, 6)
    assert np.isfinite(centroids).all() and centroids.shape == (6, 8)
    with pytest.raises(ValueError):
        spherical_kmeans(points, 61)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_grouped_sum_equals_add_at(n, clusters, seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, 5)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    ours, expected = np.zeros((clusters, 5)), np.zeros((clusters, 5))
    _grouped_sum(points, labels, ours)
    np.add.at(expected, labels, points.astype(np.float64))
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 70),
    st.integers(1, 400),
    st.integers(1, 20),
    st.integers(1, 4),
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
    st.booleans(),
)
def test_running_top_scores_any_split_and_workers(
    nq,
    nd,
    k,
    workers,
    tiles_per_block,
    integer,
):
    """Bit-identical to one worker on one block, equal to a brute-force sort; integer data has many ties."""
    rng = np.random.default_rng(nq * 1000 + nd)
    if integer:
        q = rng.integers(-2, 3, (nq, 6)).astype(np.float32)
        db = rng.integers(-2, 3, (nd, 6)).astype(np.float32)
    else:
        q, db = rng.standard_normal((nq, 6)).astype(np.float32), rng.standard_normal((nd, 6)).astype(np.float32)
    k = min(k, nd)
    old = topk_mod.DATABASE_TILE, topk_mod.QUERY_TILE
    topk_mod.DATABASE_TILE, topk_mod.QUERY_TILE = 16, 8
    try:
        single = RunningTopScores(q, k, workers=1)
        single.add(db)
        expected = single.result()
        running = RunningTopScores(q, k, workers=workers)
        start, i = 0, 0
        while start < nd:
            rows = 16 * tiles_per_block[i % len(tiles_per_block)]
            running.add(db[start : start + rows])
            start, i = start + rows, i + 1
        got = running.result()
    finally:
        topk_mod.DATABASE_TILE, topk_mod.QUERY_TILE = old
    assert np.array_equal(got, expected)
    brute = np.sort(q @ db.T, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(got, brute, atol=1e-5)


def test_block_plan_gives_every_worker_a_tile():
    one, two = plan_blocks(1 << 30, 512, 16, 100_000, workers=1), plan_blocks(1 << 30, 512, 16, 100_000, workers=2)
    assert one.reference_rows == topk_mod.DATABASE_TILE and two.reference_rows == 2 * topk_mod.DATABASE_TILE
    assert two.fixed_bytes > one.fixed_bytes and two.per_gallery_row_bytes > one.per_gallery_row_bytes


def test_indexed_bias_streams_the_gallery_with_the_same_result(tmp_path, data, monkeypatch):
    from nnn_cli import open_embeddings
    from nnn_cli.scale.index import steps as ann
    from nnn_cli.scale.index.steps import indexed_reference_topk

    gallery, ref = data
    np.save(tmp_path / "g.npy", gallery)
    whole, run = indexed_reference_topk(gallery, ref, 8, "ip", IndexChoice("ivf", nlist=20, nprobe=3))
    monkeypatch.setattr(ann, "GALLERY_BLOCK", 64)  # 8 blocks
    seen = []
    streamed, run2 = indexed_reference_topk(
        open_embeddings(tmp_path / "g.npy"),
        ref,
        8,
        "ip",
        IndexChoice("ivf", nlist=20, nprobe=3),
        progress=lambda done, total: seen.append((done, total)),
    )
    np.testing.assert_allclose(whole, streamed, atol=2e-6)  # GEMM shapes differ per block: rounding only
    assert run.info["index_sample_recall"] == run2.info["index_sample_recall"]
    assert seen and all(total == len(gallery) for _, total in seen) and max(d for d, _ in seen) <= len(gallery)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(1, 25), st.integers(1, 9))
def test_reused_chunks_cover_every_row_once(n, chunk, read):
    from nnn_cli.scale.index.build import _reused_chunks

    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 1
    seen = []
    for start, block in _reused_chunks(x, "ip", chunk, read_rows=read):
        assert 0 < len(block) <= chunk
        seen.append((start, block.copy()))
    assert [s for s, _ in seen] == list(np.cumsum([0] + [len(b) for _, b in seen])[:-1])
    np.testing.assert_array_equal(np.vstack([b for _, b in seen]), x)


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_a_source_chunk_filled_in_parallel_has_the_serial_fill_s_rows_and_first_error(tmp_path, suffix, metric):
    """Without a hash, a source's chunk is filled by ranges read on the engine's threads: the same values as
    the serial, hashing fill (which records the fingerprint), and the first bad row in row order is the one named."""
    import h5py

    from nnn_cli.data.inputs import open_embeddings
    from nnn_cli.errors import InputError
    from nnn_cli.scale.index.build import _reused_chunks

    x = np.random.default_rng(4).standard_normal((1000, 6)).astype(np.float16)

    def write(arr, name):
        path = tmp_path / (name + suffix)
        if suffix == ".npy":
            np.save(path, arr)
        else:
            with h5py.File(path, "w") as f:
                f["embeddings"] = arr
        return path

    def chunks(path, fingerprint):
        return [(s, b.copy()) for s, b in _reused_chunks(open_embeddings(path), metric, 300, 64, fingerprint)]

    good = write(x, "x")
    serial, parallel = chunks(good, True), chunks(good, False)
    assert [s for s, _ in parallel] == [s for s, _ in serial] == [0, 300, 600, 900]
    for (_, a), (_, b) in zip(serial, parallel):
        assert a.tobytes() == b.tobytes()
    bad = x.copy()
    bad[[130, 250, 700], 2] = np.nan  # two ranges of the first chunk, read at once
    with pytest.raises(InputError, match="row 130 contains NaN"):
        chunks(write(bad, "bad"), False)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_list_major_same_bytes_however_the_rows_are_split(data, ivf, threads, monkeypatch):
    """Calls on grid-aligned slices (Ray blocks, streamed chunks) and row spans cut to bound the workers'
    private top-k give the bytes of one call: each (list, row block) GEMM has the same rows either way."""
    from nnn_cli.scale.index import listscan

    gallery, _ = data
    monkeypatch.setattr(listscan, "LIST_ROW_BLOCK", 64)
    whole = list_major_topk(ivf, gallery, 8, 5, threads=threads)
    sliced = np.vstack([list_major_topk(ivf, gallery[s : s + 128], 8, 5, threads=1) for s in range(0, 500, 128)])
    assert np.array_equal(whole, sliced)
    monkeypatch.setattr(listscan, "PRIVATE_BEST_BYTES", 1)  # spans of one row block
    assert np.array_equal(list_major_topk(ivf, gallery, 8, 5, threads=threads), whole)
    monkeypatch.setattr(listscan, "LIST_ROW_BLOCK", 500)  # other GEMM shapes: equal to rounding only
    np.testing.assert_allclose(list_major_topk(ivf, gallery, 8, 5, threads=threads), whole, atol=2e-6)
