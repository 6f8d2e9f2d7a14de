"""DBNorm (DualIS / DualDIS) and its skewness, transcribed from Better_Cross_Modal_Retrieval DBNorm/dbnorm.py."""

from collections import Counter

import numpy as np
from scipy.stats import skew

from .qbnorm_oracle import inverted_softmax, qb_norm


def db_norm(train_cap_test_vis, train_vis_test_vis, test_cap_test_vis, k=1, beta1=1 / 1.99, beta2=3.0,
            dynamic_normalized=False):
    """DBNorm's db_norm with its argument bug fixed: both factors normalise ``test_cap_test_vis``.

    DBNorm's names: ``beta1`` = query-bank (train captions) factor, ``beta2`` =
    gallery-bank (train visuals) factor.  With ``dynamic_normalized`` an inactive
    factor keeps the raw score, so the product is ``s * shat`` or ``s * s``.
    """
    if dynamic_normalized:
        q = qb_norm(train_cap_test_vis, test_cap_test_vis, k=k, beta=beta1)
        g = qb_norm(train_vis_test_vis, test_cap_test_vis, k=k, beta=beta2)
    else:
        q = inverted_softmax(train_cap_test_vis, test_cap_test_vis, beta=beta1)
        g = inverted_softmax(train_vis_test_vis, test_cap_test_vis, beta=beta2)
    return q * g


def get_skewness(sim_matrix, topk=10):
    retrieve_index = (-sim_matrix).argsort(axis=1, kind="stable")[:, :topk].flatten().tolist()
    count = Counter(retrieve_index)
    return skew([count[k] for k in count.keys()])
