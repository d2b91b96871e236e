"""``TGMMEstimator``: ``tgmm_jax.estimator.TGMMEstimatorCore`` with scikit-learn's base classes.

Imported on first use of ``tgmm_jax.estimator.TGMMEstimator`` (the module's ``__getattr__``), so that
``experiments.fit``, which uses the core alone, never imports scikit-learn (~1 s, mostly scipy.stats).
"""

from __future__ import annotations

from sklearn.base import BaseEstimator, DensityMixin

from tgmm_jax.estimator import TGMMEstimatorCore


class TGMMEstimator(TGMMEstimatorCore, DensityMixin, BaseEstimator):
    __doc__ = TGMMEstimatorCore.__doc__
    __module__ = "tgmm_jax.estimator"  # its public home: pickles and reprs name tgmm_jax.estimator
