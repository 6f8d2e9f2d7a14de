"""``--engine ray``: exact NNN bias and debiased search as Ray core tasks, resumable, on shards behind URLs.

Bias job shape (issue 13)::

    gallery blocks (multiples of 1024 rows)  x  reference partitions (multiples of 8192 rows)
    task(block, partition): hold the gallery block, stream the partition in 8192-row tiles, one
                            single-threaded BLAS GEMM per (1024 x 8192) tile + O(n) partition,
                            return the block's top-k *values* against that partition
    merge(block):           top-k of the partials -> sort descending -> bias_from_topk
                            -> OUT/blocks/bias_BBBBBB.npy (+ topk_BBBBBB.npy), committed whole
    driver:                 OUT/manifest.json (inputs' fingerprints, params, plan, blocks done),
                            rewritten after every finished block

Every score comes from the same GEMM tile shape at the same global tile coordinates as the local
exact path (:class:`nnn_cli.core.topk.RunningTopScores`, 1024 x 8192 tiles), and only values are merged
(the multiset of the k largest values does not depend on the order of merging), so the biases are
byte-identical to :func:`nnn_cli.core.nnn.compute_bias` on the same machine.

Search is the same join turned around: query blocks x gallery partitions, each task returning the
(score, global index) top-k of its query block in its partition with ties to the lower index, merged
per query block by (score descending, index ascending), identical to :class:`nnn_cli.core.topk.GemmIndex`.

With ``address=None`` a private Ray is started for the run on 127.0.0.1 only and stopped after it;
``address="auto"``, ``"HOST:PORT"`` or ``"ray://HEAD:10001"`` joins an existing cluster (KubeRay,
Slurm, ``ray.util.spark``) and leaves it running.  Ray is an optional dependency: the ``ray`` extra
(from a checkout: ``.venv/bin/pip install -e '.[ray]'``)."""

from nnn_cli.data.manifest import is_manifest, read_manifest, read_manifest_bias
from nnn_cli.scale.ray.bias import ray_bias
from nnn_cli.scale.ray.incremental import ray_add_reference, ray_append
from nnn_cli.scale.ray.search import ray_search
from nnn_cli.scale.ray.session import ray_session

__all__ = [
    "is_manifest",
    "read_manifest",
    "read_manifest_bias",
    "ray_add_reference",
    "ray_append",
    "ray_bias",
    "ray_search",
    "ray_session",
]
