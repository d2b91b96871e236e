"""The per-task tools users have, as the official code runs them: NumPy moments + tensorly's power method.

Shared by the speed benchmark (``benchmarks.baselines``) and the spectral tests, which use it as the
independent reference for ``baselines.spectral``.
"""

from __future__ import annotations

import numpy as np


def numpy_whitened_tensor(x, k):
    """Hsu-Kakade whitened third moment of one task's points ``x`` [N, D] in float64, as the official code
    computes it (docs/official_differences.md §6).
    Returns (T [K, K, K], un-whitening matrix U L^1/2 [D, K])."""
    n, d = x.shape
    mean = x.mean(0)
    second = x.T @ x / n
    evals, evecs = np.linalg.eigh(second - np.outer(mean, mean))
    sigma2, v = evals[0], evecs[:, 0]
    m1 = (x * (((x - mean) @ v) ** 2)[:, None]).mean(0)
    e, u = np.linalg.eigh(second - sigma2 * np.eye(d))
    e, u = e[::-1][:k], u[:, ::-1][:, :k]
    w = u / np.sqrt(e)
    y = x @ w
    t = np.einsum("ni,nj,nk->ijk", y, y, y) / n
    a, g = w.T @ m1, w.T @ w
    t -= np.einsum("i,jk->ijk", a, g) + np.einsum("j,ik->ijk", a, g) + np.einsum("k,ij->ijk", a, g)
    return t, u * np.sqrt(e)


def tensorly_decompose(t, unwhiten, k):
    """tensorly ``SymmetricCP`` (L = 10 restarts, 10 x 3 power updates; its restarts come from NumPy's global
    generator) and the official recovery: weights = 1 / lambda^2 renormalised, means = lambda U L^1/2 v."""
    from tensorly.decomposition import SymmetricCP

    lam, vecs = SymmetricCP(rank=k, n_repeat=10, n_iteration=10).fit_transform(t)
    w = 1.0 / lam**2
    return w / w.sum(), (unwhiten @ vecs * lam).T
