"""KPosterior (learned P(K | X)): normalisation, invariances, masking, a training step, the study's criteria."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.studies.k_posterior import run as study
from tgmm_jax.models.k_posterior import KPosterior, k_cross_entropy, k_posterior_config

K_MAX = 5


class _Tasks:
    """Tasks of K = 1..K_MAX (two each), D = 3, N = 24 with the last points of odd tasks padded (numpy)."""

    def __init__(self, seed=0, n=24, dim=3):
        rng = np.random.default_rng(seed)
        ks = np.repeat(np.arange(1, K_MAX + 1), 2)
        means = rng.uniform(-5, 5, (ks.size, K_MAX, dim))
        labels = rng.integers(0, ks[:, None], (ks.size, n))
        points = np.take_along_axis(means, labels[..., None], axis=1) + rng.normal(size=(ks.size, n, dim))
        mask = np.ones((ks.size, n), bool)
        mask[1::2, n // 2 :] = False
        self.points = jnp.asarray(points, jnp.float32)
        self.point_mask = jnp.asarray(mask)
        self.num_components = jnp.asarray(ks, jnp.int32)


def _baselines_block(bic, bgm_weights) -> dict:
    """A cached baselines block whose every criterion is ``bic`` (no collapsed restarts)."""
    return {
        "bic": bic,
        "aic": bic,
        "bic_raw": bic,
        "aic_raw": bic,
        "bgm_weights": bgm_weights,
        "degenerate_restarts": np.zeros_like(bic),
    }


@pytest.fixture(scope="module")
def setup():
    config = k_posterior_config("tiny", K_MAX)
    model = KPosterior(config, K_MAX)
    task = _Tasks()
    params = model.init(jax.random.PRNGKey(1), task.points, task.point_mask)
    # larger weights than the init, so the output depends visibly on the input and the tolerances bite
    params = jax.tree.map(lambda p: p * 3.0, params)
    apply = jax.jit(model.apply)
    return model, params, apply, task


@pytest.mark.slow  # shares the module's compiled model
def test_probabilities_sum_to_one(setup):
    _, params, apply, task = setup
    log_probs = apply(params, task.points, task.point_mask)
    assert log_probs.shape == (task.points.shape[0], K_MAX)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5)
    # not a constant map: different tasks get visibly different posteriors
    assert np.ptp(np.asarray(log_probs), axis=0).max() > 1e-2


def _same(apply, params, task, points, mask=None):
    ref = apply(params, task.points, task.point_mask)
    out = apply(params, points, task.point_mask if mask is None else mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)


@pytest.mark.slow  # shares the module's compiled model
def test_invariant_to_point_order(setup):
    _, params, apply, task = setup
    perm = jax.random.permutation(jax.random.PRNGKey(2), task.points.shape[1])
    ref = apply(params, task.points, task.point_mask)
    out = apply(params, task.points[:, perm], task.point_mask[:, perm])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)


@pytest.mark.slow  # shares the module's compiled model
@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_invariant_to_scale_and_translation(setup, c):
    _, params, apply, task = setup
    b = c * jax.random.normal(jax.random.PRNGKey(3), (1, 1, task.points.shape[-1])) * 4.0
    _same(apply, params, task, c * task.points + b)


@pytest.mark.slow  # shares the module's compiled model
def test_invariant_to_rotation(setup):
    _, params, apply, task = setup
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(4), (3, 3)))
    _same(apply, params, task, task.points @ q.T)


@pytest.mark.slow  # shares the module's compiled model
def test_padding_changes_nothing(setup):
    _, params, apply, task = setup
    b, n, d = task.points.shape
    # interleave n garbage (NaN) points, masked out
    points = jnp.concatenate([task.points, jnp.full((b, n, d), jnp.nan)], axis=1)
    mask = jnp.concatenate([task.point_mask, jnp.zeros((b, n), bool)], axis=1)
    order = jax.random.permutation(jax.random.PRNGKey(5), 2 * n)
    _same(apply, params, task, points[:, order], mask[:, order])


@pytest.mark.slow  # shares the module's compiled model
def test_a_few_steps_lower_the_loss(setup):
    model, params, _, task = setup
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(
            lambda p: k_cross_entropy(model.apply(p, task.points, task.point_mask), task.num_components)
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(8):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.slow  # ~8 s on the loaded 2-core CPU (sklearn import and fits)
def test_bic_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(7)
    x = rng.uniform(-5, 5, (3, 2))[rng.integers(0, 3, 64)] + rng.normal(size=(64, 2))
    ic = study.information_criteria(x, k_max=3, n_init=1, seed=0)
    for k in (1, 3):
        gm = GaussianMixture(
            k, covariance_type="spherical", n_init=1, init_params="k-means++", random_state=0
        )
        gm.fit(x)
        np.testing.assert_allclose(ic["bic_raw"][k - 1], gm.bic(x), rtol=1e-10)
        np.testing.assert_allclose(ic["aic_raw"][k - 1], gm.aic(x), rtol=1e-10)
    # no restart collapsed on this well-separated task: the degenerate-excluded criteria are the same
    np.testing.assert_array_equal(ic["degenerate_restarts"], 0)
    np.testing.assert_allclose(ic["bic"], ic["bic_raw"])


def test_collapsed_restarts_are_excluded():
    # 20 points of one Gaussian plus 2 exact duplicates of one point: a component can sit on the duplicates
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    x = np.concatenate([x, x[:1], x[:1]])
    _, degenerate = study.em_restarts(x, 4, n_init=5, seed=0)
    assert degenerate.any()  # a collapsed component has an unbounded likelihood (capped by reg_covar)
    ic = study.information_criteria(x, k_max=4, n_init=5, seed=0)
    assert ic["loglik"][3] < ic["loglik_raw"][3]
    assert ic["bic"].argmin() == 0 and ic["bic_raw"].argmin() > 0


def test_analyse_counts_and_scores():
    # two cells at K = 1, 2 with hand-set criteria: BIC right on both tasks of K = 1, wrong on one of K = 2
    bic = np.full((2, study.K_MAX), 100.0)
    blocks = {}
    for k in (1, 2):
        b = bic.copy()
        b[:, k - 1] = 0.0
        if k == 2:
            b[1, 0], b[1, 1] = 0.0, 100.0
        weights = np.zeros((2, study.K_MAX))
        weights[:, :k] = 1.0 / k
        log_probs = np.log(np.full((2, study.K_MAX), 0.5 / (study.K_MAX - 1)))
        log_probs[:, k - 1] = np.log(0.5)
        blocks[(2, 32, k)] = {
            "baselines": {
                "bic": b,
                "aic": b,
                "bic_raw": b,
                "aic_raw": b,
                "bgm_weights": weights,
                "degenerate_restarts": np.zeros_like(b),
            },
            "model": {"log_probs": log_probs},
        }
    saved = study.analyse(blocks, [2], [32], 2, 32, 0.03)
    acc = {c["k"]: c["accuracy"] for c in saved["cells"]}
    assert acc[1]["bic"] == 1.0 and acc[2]["bic"] == 0.5
    assert acc[1]["bgm"] == 1.0 and acc[2]["bgm"] == 1.0 and acc[2]["model"] == 1.0
    np.testing.assert_allclose(saved["summary"]["logloss"]["model"], np.log(2.0))
    assert saved["targets"]["k1_answers_1_at_least_95pct"]["met"]
    assert saved["reliability"]["model"]["ece"] == pytest.approx(0.5)


def test_report_section_renders():
    from experiments.studies.k_posterior.report import k_posterior_section

    blocks = {}
    for k in (1, 2):
        bic = np.full((2, study.K_MAX), 100.0)
        bic[:, k - 1] = 0.0
        log_probs = np.log(np.full((2, study.K_MAX), 0.5 / (study.K_MAX - 1)))
        log_probs[:, k - 1] = np.log(0.5)
        weights = np.zeros((2, study.K_MAX))
        weights[:, :k] = 1.0 / k
        blocks[(2, 32, k)] = {
            "baselines": _baselines_block(bic, weights),
            "model": {"log_probs": log_probs},
        }
    saved = study.analyse(blocks, [2], [32], 2, 32, 0.03)
    text = "\n".join(k_posterior_section(saved))
    assert "| 2 | 32 | 100.0 | 100.0 | 100.0 | 100.0 |" in text
    assert "**met**" in text and "**not met**" in text  # accuracy gap 0 < 10 points; the others met


@pytest.mark.slow  # compiles and runs the training step three times
def test_training_resumes_exactly(tmp_path):
    from experiments import train_k_posterior as tk

    cfg = dict(
        size="tiny",
        num_layers=1,
        k_max=3,
        dims=[2],
        n_min=6,
        n_max=10,
        tasks_per_k=2,
        learning_rate=1e-3,
        warmup_steps=1,
        weight_decay=1e-4,
        seed=0,
        steps=4,
        log_every=2,
    )
    straight = tk.train(str(tmp_path / "a"), cfg, checkpoint_every=2)
    tk.train(str(tmp_path / "b"), cfg, checkpoint_every=2, stop_after=2)
    resumed = tk.train(str(tmp_path / "b"), cfg, checkpoint_every=2)
    assert int(resumed["step"]) == 4
    jax.tree.map(np.testing.assert_array_equal, straight["params"], resumed["params"])
    _, params, saved = tk.load(str(tmp_path / "b"))
    assert saved["steps"] == 4
    jax.tree.map(np.testing.assert_array_equal, params, resumed["params"])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    # --init_from: a new run (other dimensions, seed, steps) starts from that run's parameters
    tk_cfg = dict(cfg, dims=[3, 5], seed=1, steps=4, init_from=str(tmp_path / "b"))
    started = tk.train(str(tmp_path / "c"), tk_cfg, checkpoint_every=2, stop_after=0)
    jax.tree.map(np.testing.assert_array_equal, started["params"], resumed["params"])
    with pytest.raises(ValueError, match="holds another model"):
        tk.train(str(tmp_path / "d"), dict(tk_cfg, num_layers=2), checkpoint_every=2)


def _blocks_with_bayes():
    """Two cells (K = 1, 2) of two tasks: the model right on all, BIC wrong on task 1 of K = 2, the Bayes log
    evidences hand-set (task 1 of K = 2: K = 1 and 2 equally likely)."""
    blocks = {}
    for k in (1, 2):
        bic = np.full((2, study.K_MAX), 100.0)
        bic[:, k - 1] = 0.0
        if k == 2:
            bic[1, 0], bic[1, 1] = 0.0, 100.0
        log_probs = np.log(np.full((2, study.K_MAX), 0.5 / (study.K_MAX - 1)))
        log_probs[:, k - 1] = np.log(0.5)
        log_evidence = np.full((2, study.K_MAX), -50.0)
        log_evidence[:, k - 1] = 0.0
        if k == 2:
            log_evidence[1, 0] = 0.0
        blocks[(2, 32, k)] = {
            "baselines": _baselines_block(
                bic, np.eye(study.K_MAX)[[0, 0]] if k == 1 else np.full((2, study.K_MAX), 0.0)
            ),
            "model": {"log_probs": log_probs},
            "bayes": {"log_evidence": log_evidence},
        }
    return blocks


def test_bayes_comparison_counts_and_divergences():
    saved = study.analyse(_blocks_with_bayes(), [2], [32], 2, 32, 0.03)
    cells = {c["k"]: c["bayes"] for c in saved["cells"]}
    # argmax of task 1 of K = 2 is the first of the tied K's: 1
    assert cells[1]["accuracy"]["bayes"] == 1.0 and cells[2]["accuracy"]["bayes"] == 0.5
    assert cells[2]["accuracy"]["bic"] == 0.5 and cells[2]["agrees_with_bayes"]["bic"] == 1.0
    assert cells[2]["agrees_with_bayes"]["model"] == 0.5
    # Bayes on task 1 of K = 2: P(1) = P(2) = 1 / (2 + 6 e^-50); log-loss of the true K 2
    p_tie = 1.0 / (2.0 + 6.0 * np.exp(-50.0))
    np.testing.assert_allclose(cells[2]["logloss"]["bayes"], -0.5 * np.log(p_tie), rtol=1e-9)
    # KL(bayes || model) by hand on the K = 1 cell: bayes ~ a point mass at K = 1, model 0.5 there
    np.testing.assert_allclose(cells[1]["kl_from_bayes"]["model"], np.log(2.0), atol=1e-12)
    summary = saved["summary"]["bayes"]
    assert summary["by_dn"]["d2_n32"]["tasks"] == 4
    np.testing.assert_allclose(summary["all"]["accuracy"]["bayes"], 0.75)
    assert saved["reliability"]["bayes"]["bins"]


def test_report_shows_the_bayes_rows():
    from experiments.studies.k_posterior.report import k_posterior_section

    saved = study.analyse(_blocks_with_bayes(), [2], [32], 2, 32, 0.03)
    text = "\n".join(k_posterior_section(saved))
    assert "| 2 | 32 | 4 (K 1-2) | 75.0 | 100.0 | 75.0 |" in text  # two of the eight true K
    without = {(d, n, k): {**b, "bayes": None} for (d, n, k), b in _blocks_with_bayes().items()}
    assert "Bayes (AIS)" not in "\n".join(k_posterior_section(study.analyse(without, [2], [32], 2, 32, 0.03)))


@pytest.mark.slow  # compiles the AIS sampler once (~10 s)
def test_bayes_block_is_cached_with_its_settings(tmp_path):
    from baselines.bayes_k import BayesKConfig

    config = BayesKConfig(particles=2, temperatures=4, k_max=study.K_MAX)
    out = study.bayes_block(str(tmp_path), 0, 2, 16, 2, 3, config)
    assert out["log_evidence"].shape == (3, study.K_MAX) and np.isfinite(out["log_evidence"]).all()
    again = study.load_bayes(str(tmp_path), 2, 16, 2, 3, config)
    np.testing.assert_array_equal(again["log_evidence"], out["log_evidence"])
    assert study.load_bayes(str(tmp_path), 2, 16, 3, 3, config) is None
    with pytest.raises(ValueError, match="other settings"):
        study.load_bayes(str(tmp_path), 2, 16, 2, 4, config)
