"""Exports a trained K posterior (experiments/train_k_posterior.py) into the package, with its model card.

    python -m experiments.export_k_posterior --workdir=runs/k_posterior_5k \\
        --study=results/k_posterior/k_posterior.json

Writes ``tgmm_jax/pretrained/k_posterior/`` (``--out``): the parameters, ``k_posterior.json`` and
``MODEL_CARD.md``, whose tables come from the study's JSON (experiments/studies/k_posterior/run.py, run on the same
workdir): K accuracy per (d, N) against BIC, AIC and variational Bayes, the log-loss of the true K, and the rate
of K = 1 on pure noise. ``TGMMEstimator(n_components="auto")`` reads it (tgmm_jax/number_of_components.py).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from tgmm_jax.number_of_components import (
    CARD_FILE,
    SHIPPED,
    load_k_posterior,
    posterior_over_k,
    save_k_posterior,
)
from tgmm_jax.train.checkpoint import Checkpoints

FLAGS = flags.FLAGS
METHODS = ("model", "bic", "bic_raw", "aic", "bgm")


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training workdir (experiments/train_k_posterior.py).")
    flags.DEFINE_string(
        "study", None, "k_posterior.json of experiments/studies/k_posterior/run.py on that workdir."
    )
    flags.DEFINE_string("out", SHIPPED, "Directory to write.")


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


NOISE_DIMS = (2, 3, 4, 5, 6, 8, 16, 32)
NOISE_TASKS, NOISE_N = 64, 128


def noise_check(ckpt) -> dict:
    """Per dimension d: the share of ``NOISE_TASKS`` pure-noise datasets (N(0, I), ``NOISE_N`` points) whose most
    probable K is 1, and the mean P(K = 1 | X), including dimensions outside the training set; with the noise
    head, also told the noise variance (1): ``k1_rate_known``, ``mean_p1_known``."""
    out = {}
    for d in NOISE_DIMS:
        rng = np.random.default_rng(d)
        xs = [rng.standard_normal((NOISE_N, d)) for _ in range(NOISE_TASKS)]
        probs = posterior_over_k(ckpt, xs, seed=d)
        out[d] = {"k1_rate": float(np.mean(probs.argmax(axis=1) == 0)), "mean_p1": float(probs[:, 0].mean())}
        if ckpt.model.noise_head:
            probs = posterior_over_k(ckpt, xs, seed=d, noise_variance=1.0)
            out[d]["k1_rate_known"] = float(np.mean(probs.argmax(axis=1) == 0))
            out[d]["mean_p1_known"] = float(probs[:, 0].mean())
    return out


def model_card(
    train_config: dict, step: int, study: dict, noise: dict | None = None, workdir: str | None = None
) -> str:
    """The card's Markdown: what the model is, its training, and the study's numbers (no hand-written ones)."""
    summary, settings = study["summary"], study["settings"]
    if settings.get("workdir") is None:
        raise ValueError("the study JSON names no workdir")
    methods = METHODS + tuple(m for m in ("ablation", "model_noise", "bic_known") if m in summary["accuracy"])
    lines = [
        "# K posterior: a learned P(K | X)",
        "",
        "`KPosterior` (tgmm_jax/models/k_posterior.py): the normalised read-in, the `set` transformer and a",
        "pooled head over K = 1..k_max. It reads at most `n_max` points of a dataset (a seeded subsample of more),",
        "and nothing it sees depends on the data's units, order, translation or rotation.",
    ]
    if train_config.get("evidence_restarts"):
        lines += [
            "Beside the set network it reads the likelihood evidence (tgmm_jax/k_evidence.py): for every K, the",
            f"best of {train_config['evidence_restarts']} EM fits with one shared spherical variance "
            + f"({train_config['evidence_steps']} iterations from k-means++ starts, the points in a canonical order),",
            "as per-K gains in units of BIC's penalty and a BIC-like softmax, through a second MLP head.",
        ]
    if train_config.get("evidence_geometry"):
        lines.append(
            "A third MLP head reads each K's fit geometry (closest means in noise units, smallest and mean "
            "expected counts, shared variance; tgmm_jax.models.k_posterior.fit_geometry)."
        )
    if train_config.get("noise_head"):
        lines += [
            "Another MLP head reads, for every K, the evidence fit's shared variance over a known noise variance;",
            "it is used only when the noise variance is given (`TGMMEstimator(noise_variance=v)`, or",
            "`posterior_over_k(..., noise_variance=v)`); without it the model answers as it did before the head",
            "was added"
            + (
                " (the head was trained alone, every other parameter frozen)."
                if train_config.get("train_noise_head_only")
                else "."
            ),
        ]
    if "ablation" in methods:
        lines.append(
            f"`ablation` in the tables: `{settings.get('ablation_workdir')}`, the set network alone, on the same tasks."
        )
    if "model_noise" in methods:
        lines.append(
            f"`model_noise`: `{settings.get('noise_workdir')}` told the noise variance (1); `bic_known`: BIC told it "
            "too (unit-variance EM, the same restarts; K d + K - 1 parameters)."
        )
    lines += [
        '`TGMMEstimator(n_components="auto")` picks the most probable K it can fit.',
        "",
        "## Training",
        "",
        f"- Run: `{workdir or settings['workdir']}`, step {step}; config:",
        "",
        "```json",
        json.dumps(train_config, indent=1, sort_keys=True),
        "```",
        "",
        "- Prior: Algorithm 1 without the cosine filter of the means, K uniform on 1..k_max, means U[-5, 5]^d,",
        "  unit isotropic noise, weights sort(U[0.2, 0.8]^K) normalised, N uniform on n_min..n_max.",
        "",
        f"## Held-out tasks ({settings['tasks_per_cell']} per (d, N, K), K = 1..{max(settings['ks'])})",
        "",
        "K accuracy, % (bic: EM k-means++ x" + str(settings["n_init"]) + ", collapsed restarts excluded;",
        f"bic_raw: sklearn's n_init rule; bgm: BayesianGaussianMixture, weights above {settings['bgm_threshold']}):",
        "",
        "| cell | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for cell, accs in summary["accuracy_by_dn"].items():
        lines.append(f"| {cell} | " + " | ".join(_pct(accs.get(m)) for m in methods) + " |")
    for name, key in (("all cells", "accuracy"), ("N <= 128", "accuracy_n_le_128")):
        accs = summary[key]
        lines.append(f"| {name} | " + " | ".join(_pct(accs.get(m)) for m in methods) + " |")
    loss = summary["logloss"]
    k1 = summary["k1_rate"]
    lines += [
        "",
        f"Log-loss of the true K: model {loss['model']:.3f}, BIC-softmax {loss['bic_softmax']:.3f}"
        + (
            f"; told the noise: model_noise {loss['model_noise']:.3f}, BIC-softmax {loss['bic_known_softmax']:.3f}."
            if loss.get("model_noise") is not None and loss.get("bic_known_softmax") is not None
            else "."
        ),
        f"K = 1 answered on pure noise (true K = 1): model {_pct(k1['model'])}%, BIC {_pct(k1['bic'])}%"
        + (f", model_noise {_pct(k1['model_noise'])}%." if k1.get("model_noise") is not None else "."),
        "",
        "Targets of the study:",
        "",
    ]
    for name, target in study["targets"].items():
        values = ", ".join(f"{k} {v:.3f}" for k, v in target.items() if k != "met")
        lines.append(f"- {name}: {values}: {'met' if target['met'] else 'not met'}")
    if noise:
        trained = set(train_config["dims"])
        lines += [
            "",
            f"## Pure noise at every dimension ({NOISE_TASKS} datasets of N(0, I), N = {NOISE_N}, per d)",
            "",
            (
                "| d | in the last stage's dims | answers K = 1 | mean P(K = 1 given X) | noise told: answers K = 1 "
                "| noise told: mean P(K = 1 given X) |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for d, row in noise.items():
            mark = "yes" if int(d) in trained else "no"
            known = (
                f"{_pct(row['k1_rate_known'])}% | {row['mean_p1_known']:.3f}"
                if "k1_rate_known" in row
                else "– | –"
            )
            lines.append(f"| {d} | {mark} | {_pct(row['k1_rate'])}% | {row['mean_p1']:.3f} | {known} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    from experiments.train_k_posterior import load

    logging.set_verbosity(logging.WARNING)

    model, params, cfg = load(FLAGS.workdir)
    with open(FLAGS.study) as f:
        study = json.load(f)
    computed_on = {study["settings"].get("workdir"), study["settings"].get("noise_workdir")}
    if FLAGS.workdir not in computed_on:
        raise app.UsageError(
            f"{FLAGS.study} was computed on {study['settings'].get('workdir')!r} (noise head: "
            f"{study['settings'].get('noise_workdir')!r}), not on {FLAGS.workdir!r}"
        )
    if study["settings"].get("noise_workdir") == FLAGS.workdir and not cfg.get("train_noise_head_only"):
        raise app.UsageError(
            f"{FLAGS.workdir} trained more than its noise head: the study's unit-free columns (run "
            f"{study['settings'].get('workdir')!r}) would not describe it"
        )
    with Checkpoints(os.path.join(FLAGS.workdir, "checkpoints"), read_only=True) as ckpts:
        step = ckpts.latest_step()
    save_k_posterior(FLAGS.out, model, params, cfg, step=step, source=FLAGS.workdir)
    load_k_posterior.cache_clear()
    loaded = load_k_posterior(FLAGS.out)  # read back: the files describe the model they hold
    card = model_card(cfg, step, study, noise_check(loaded), workdir=FLAGS.workdir)
    with open(os.path.join(FLAGS.out, CARD_FILE), "w") as f:
        f.write(card)
    print(
        f"wrote {FLAGS.out}: K posterior k_max={loaded.k_max}, N {loaded.n_min}..{loaded.n_max}, step {step}"
    )


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir", "study"])
    app.run(main)
