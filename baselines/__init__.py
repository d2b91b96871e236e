"""Classical baselines for GMM parameter estimation, batched over padded ``GMMTask`` batches.

Every baseline is ``fn(key, task) -> (MixtureParams, info)``: jit-compiled once per shape, each task fitted
with its own K (``component_mask``) on its own real points (``point_mask``); ``info`` holds per-task [B]
arrays (always 'valid'; 'n_iter', 'converged', 'loglik' where they apply).

  em            EM, official initialisation (pi = 1/K, mu ~ N(0, I)), one start       (baselines.em)
  em_kmeanspp   EM, k-means++ initialisation, best of 10 starts                        (baselines.em)
  spectral      Hsu-Kakade moments + robust tensor power method, isotropic only       (baselines.spectral)
  two_round_em  Dasgupta-Schulman two-round EM                                         (baselines.two_round_em)
  gradient_em   Adam on the log-likelihood, k-means++ start                            (baselines.gradient_em)
  em_seeded     the clustering read-out's skeleton: 4 deterministic seedings, 4 EM steps (baselines.seeded_em)

For tasks with missing coordinates (NaN in ``task.points``), registered but not in ``NAMES``
(``MISSING_NAMES``; both also fit complete tasks):

  em_missing     exact missing-data EM, k-means++ (on mean-imputed points), best of 10 (baselines.missing_em)
  em_mean_impute mean imputation, then em_kmeanspp                                     (baselines.missing_em)

A hedge over local optima, registered but not in ``NAMES`` (the hard-regime study asks for it by name):

  em_averaged   em_kmeanspp's 10 fits averaged, weighted by likelihood (not the best) (baselines.em,
                tgmm_jax.mixture.averaging)

Reference methods, registered but not in ``NAMES`` (slow by design; studies ask for them by name):

  bayes         the posterior mean under the task prior, by MCMC: the limit column     (baselines.bayes)

``BASELINES`` holds the isotropic defaults (unit known variance, the paper's setting);
``get_baseline(name, variant, **overrides)`` builds any variant with changed settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from baselines.bayes import BayesConfig, fit_bayes
from baselines.em import EMConfig, fit_em
from baselines.gradient_em import GradientEMConfig, fit_gradient_em
from baselines.missing_em import MissingEMConfig, fit_em_mean_impute, fit_em_missing
from baselines.seeded_em import SeededEMConfig, fit_seeded_em
from baselines.spectral import SpectralConfig, fit_spectral
from baselines.two_round_em import TwoRoundConfig, fit_two_round_em
from tgmm_jax.tasks import VARIANTS

NAMES = ("em", "em_kmeanspp", "spectral", "two_round_em", "gradient_em", "em_seeded")
REFERENCE_NAMES = ("bayes",)
HEDGE_NAMES = ("em_averaged",)
MISSING_NAMES = ("em_missing", "em_mean_impute")

# name -> (fit function, config class, default settings)
_REGISTRY = {
    "em": (fit_em, EMConfig, dict(init="official", n_init=1)),
    "em_kmeanspp": (fit_em, EMConfig, dict(init="kmeans++", n_init=10)),
    "em_averaged": (fit_em, EMConfig, dict(init="kmeans++", n_init=10, combine="average")),
    "spectral": (fit_spectral, SpectralConfig, {}),
    "two_round_em": (fit_two_round_em, TwoRoundConfig, {}),
    "gradient_em": (fit_gradient_em, GradientEMConfig, {}),
    "em_seeded": (fit_seeded_em, SeededEMConfig, {}),
    "bayes": (fit_bayes, BayesConfig, {}),
    "em_missing": (fit_em_missing, MissingEMConfig, {}),
    "em_mean_impute": (fit_em_mean_impute, EMConfig, dict(init="kmeans++", n_init=10)),
}
_ISOTROPIC_ONLY = ("spectral", "bayes")
_ISOTROPIC_ONLY_WHY = {
    "spectral": "the spectral method assumes one common variance sigma^2 for all components (Hsu-Kakade moments)",
    "bayes": "its prior and sampler assume the isotropic unit, known variance of the paper's tasks",
}


def applies_to(name: str, variant: str) -> bool:
    """Whether baseline ``name`` can fit the given mixture variant."""
    _check(name, variant)
    return variant == "isotropic" or name not in _ISOTROPIC_ONLY


def _check(name: str, variant: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown baseline {name!r}; registered: {list(NAMES + HEDGE_NAMES + REFERENCE_NAMES + MISSING_NAMES)}"
        )
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


def get_baseline(name: str, variant: str = "isotropic", **overrides) -> Callable:
    """``fn(key, task) -> (MixtureParams, info)`` for baseline ``name`` on the given variant.

    ``overrides`` change the baseline's config fields (e.g. ``n_init=5``, ``max_iter=50``); unknown
    fields and bad values raise ValueError naming the problem.
    """
    _check(name, variant)
    if not applies_to(name, variant):
        raise ValueError(
            f"baseline {name!r} does not apply to the {variant} variant: " + _ISOTROPIC_ONLY_WHY[name]
        )
    fit, config_cls, defaults = _REGISTRY[name]
    settings = dict(defaults, **overrides)
    if "variant" in config_cls.__dataclass_fields__:
        settings["variant"] = variant
    unknown = sorted(set(settings) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for baseline {name!r}; "
            f"known: {sorted(config_cls.__dataclass_fields__)}"
        )
    return functools.partial(fit, config=config_cls(**settings))


BASELINES: dict[str, Callable] = {name: get_baseline(name) for name in NAMES}

__all__ = [
    "BASELINES",
    "HEDGE_NAMES",
    "MISSING_NAMES",
    "NAMES",
    "REFERENCE_NAMES",
    "applies_to",
    "get_baseline",
]
