"""QB-Norm's Dynamic Inverted Softmax, transcribed from ioanacroi/qb-norm dynamic_inverted_softmax.py (float64)."""

import numpy as np


def get_retrieved_videos(sims, k):
    argm = np.argsort(-sims, axis=1, kind="stable")
    topk = argm[:, :k].reshape(-1)
    return np.unique(topk)


def get_index_to_normalize(sims, videos):
    argm = np.argsort(-sims, axis=1, kind="stable")[:, 0]
    result = np.array([x in videos for x in argm])
    return np.nonzero(result)


def qb_norm(train_test, test_test, k=1, beta=20.0):
    """Rows of test_test whose top-1 is in the activation set: exp(beta s) / sum_bank exp(beta s); others raw."""
    retrieved_videos = get_retrieved_videos(train_test, k)
    test_test_normalized = np.array(test_test, dtype=np.float64, copy=True)  # the original aliases its input
    train_test = np.exp(np.asarray(train_test, dtype=np.float64) * beta)
    test_exp = np.exp(np.asarray(test_test, dtype=np.float64) * beta)
    normalizing_sum = np.sum(train_test, axis=0)
    index_for_normalizing = get_index_to_normalize(test_exp, retrieved_videos)
    test_test_normalized[index_for_normalizing, :] = np.divide(test_exp[index_for_normalizing, :], normalizing_sum)
    return test_test_normalized


def inverted_softmax(train_test, test_test, beta=20.0):
    """QB-Norm without the dynamic part (DBNorm's ``IS``): every row renormalised."""
    return np.exp(np.asarray(test_test, np.float64) * beta) / np.exp(np.asarray(train_test, np.float64) * beta).sum(axis=0)
