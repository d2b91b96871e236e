"""Composing a run: the ``{name: method}`` dicts the library scores, built from the ``baselines`` registry.

The library (``tgmm_jax``) never imports ``baselines``; these functions build the methods and hand them to
the trainer (``train``) and to ``tgmm_jax.scoring.evaluate_methods`` (``methods_for_run``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from baselines import NAMES, applies_to, get_baseline
from baselines.em import fit_em_from
from baselines.seeded_em import skeleton_settings
from experiments import reporting
from tgmm_jax import scoring
from tgmm_jax.refine import em_refine
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.config import eval_baseline_names


def baseline_methods(names, variant: str = "isotropic") -> dict[str, scoring.Method]:
    """The registered baselines ``names`` for ``variant``, as methods (unknown or inapplicable names raise)."""
    return {name: scoring.param_free(get_baseline(name, variant=variant)) for name in names}


def eval_baselines(config) -> dict[str, scoring.Method]:
    """The baselines a training config's periodic evaluation names (``config.eval.baselines``)."""
    return baseline_methods(eval_baseline_names(config.eval), config.task.variant)


def reference_for(model_config, variant: str = "isotropic") -> tuple[str, scoring.Method]:
    """(name, method) of the parameter-free method a model's learned gain is measured against: its skeleton
    ``em_seeded`` (the same seedings, iterations and rank) for a seeded clustering read-out, else em_kmeanspp."""
    try:
        settings = skeleton_settings(model_config)
    except ValueError:
        return "em_kmeanspp", scoring.param_free(get_baseline("em_kmeanspp", variant=variant))
    return "em_seeded", scoring.param_free(get_baseline("em_seeded", variant=variant, **settings))


def _evaluated_model_config(config):
    """The model config as the periodic evaluation reads the model out (``eval.slot_init`` applied)."""
    from tgmm_jax.models.config import reseeded
    from tgmm_jax.train.config import model_config_from

    return reseeded(model_config_from(config.model), config.eval.slot_init)


def train(config, workdir: str, **kwargs) -> dict:
    """``train_and_evaluate`` with the config's evaluation baselines and the model's reference (for its learned
    gain); prints the last evaluation's l2 table and the learned gain."""
    reference, reference_method = reference_for(_evaluated_model_config(config), config.task.variant)
    baselines = dict(eval_baselines(config), **{reference: reference_method})
    summaries = train_and_evaluate(config, workdir, baselines=baselines, reference=reference, **kwargs)
    if summaries and jax.process_index() == 0:
        n = config.eval.n or config.task.n_max
        print(
            f"\nlast evaluation, on {n}-point tasks, l2 error, mean ± sem (median):\n{reporting.format_table(summaries)}"
            f"\n\n{reporting.GAIN_TITLE}:\n{reporting.format_gain_table(summaries)}"
        )
    return summaries


def methods_for_run(run, names=None) -> tuple[dict[str, scoring.Method], dict, dict]:
    """TGMM of a trained run (``train.restore.load_run``) and the baselines: all that apply, or ``names``.

    Returns the methods, their parameters ({MODEL_METHOD: run.params} when TGMM is among them) and the
    references ({MODEL_METHOD: its reference, added to the methods}), the mappings ``scoring.evaluate_methods``
    takes. The reference (``reference_for``) is the skeleton ``em_seeded`` built with this model's settings.
    """
    available = [scoring.MODEL_METHOD] + [b for b in NAMES if applies_to(b, run.spec.variant)]
    names = list(names or available)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(
            f"unknown or inapplicable method(s) {unknown} for the {run.spec.variant} variant; "
            f"available: {available}"
        )
    methods, params, references = {}, {}, {}
    if scoring.MODEL_METHOD in names:
        methods[scoring.MODEL_METHOD] = scoring.model_method(run.model)
        params[scoring.MODEL_METHOD] = run.params
    skip = {scoring.MODEL_METHOD}
    if scoring.MODEL_METHOD in names:
        reference, methods[reference] = reference_for(run.model_config, run.spec.variant)
        references[scoring.MODEL_METHOD] = reference
        skip.add(reference)
    methods.update(baseline_methods([m for m in names if m not in skip], run.spec.variant))
    return methods, params, references


def _model_estimate(model, params, key, task):
    del key
    return model.apply({"params": params}, task.points, task.point_mask, task.num_components).to_params()


def _method_estimate(method, params, key, task):
    return method(params, key, task)[0]


def _then_restarts(first, n_init: int, params, key, task):
    """EM to convergence from ``first(params, key, task)`` and from ``n_init`` k-means++ starts; per task the
    fit of highest log-likelihood."""
    fitted, fitted_info = fit_em_from(task, first(params, key, task))
    restarts, restarts_info = get_baseline("em_kmeanspp", n_init=n_init)(key, task)
    keep_B = fitted_info["valid"] & ~(
        restarts_info["valid"] & (restarts_info["loglik"] > fitted_info["loglik"])
    )

    def pick(a, b):
        return None if a is None else jnp.where(keep_B.reshape(keep_B.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, fitted, restarts, is_leaf=lambda x: x is None), {
        "valid": keep_B | restarts_info["valid"]
    }


def model_with_restarts(model, n_init: int = 3) -> scoring.Method:
    """TGMM as the first restart of EM: EM to convergence from the network's estimate and from ``n_init``
    k-means++ starts; each task keeps the fit of highest log-likelihood (isotropic variant)."""
    return functools.partial(_then_restarts, functools.partial(_model_estimate, model), int(n_init))


def method_with_restarts(method: scoring.Method, n_init: int = 3) -> scoring.Method:
    """``model_with_restarts`` for any method (e.g. the skeleton em_seeded, the parameter-free counterpart)."""
    return functools.partial(_then_restarts, functools.partial(_method_estimate, method), int(n_init))


def _then_em(method, steps: int, params, key, task):
    estimate, _ = method(params, key, task)
    return em_refine(task.points, task.point_mask, estimate, steps), {}


def method_then_em(method: scoring.Method, steps: int) -> scoring.Method:
    """``method`` followed by ``steps`` parameter-free EM steps (``refine.em_refine``), as ``tgmm+em`` is the
    model followed by them: e.g. em_seeded+em, the skeleton's counterpart of tgmm+em."""
    return functools.partial(_then_em, method, int(steps))


def cluster_with_skeleton(ckpt, refine_steps: int, baselines=("em", "em_kmeanspp", "spectral")):
    """(methods, params) of the studies that score a shipped clustering checkpoint on fixed tasks: the
    ``baselines``, the model (``tgmm``) and the model + ``refine_steps`` EM steps (``tgmm+em``), and beside them
    its parameter-free skeleton (``em_seeded``, its learned gain's reference) and the skeleton + the same EM
    steps (``em_seeded+em``)."""
    skeleton = reference_for(ckpt.model_config)[1]
    methods = {
        **baseline_methods(baselines),
        scoring.MODEL_METHOD: scoring.model_method(ckpt.model),
        "tgmm+em": scoring.model_method(ckpt.model, refine_steps),
        "em_seeded": skeleton,
        "em_seeded+em": method_then_em(skeleton, refine_steps),
    }
    return methods, {scoring.MODEL_METHOD: ckpt.params, "tgmm+em": ckpt.params}
