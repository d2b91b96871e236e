"""KPosterior's known-noise head: unknown noise changes nothing, joint scale invariance, per-task NaN, frozen
training, and the checkpoint and ``posterior_over_k`` paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax.models.k_posterior import KPosterior, k_posterior_config

K_MAX = 4


def _tasks(seed=0, b=6, n=20, dim=2):
    rng = np.random.default_rng(seed)
    ks = rng.integers(1, K_MAX + 1, b)
    means = rng.uniform(-4, 4, (b, K_MAX, dim))
    labels = rng.integers(0, ks[:, None], (b, n))
    points = np.take_along_axis(means, labels[..., None], axis=1) + rng.normal(size=(b, n, dim))
    mask = np.ones((b, n), bool)
    mask[1::2, n - 5 :] = False
    return jnp.asarray(points, jnp.float32), jnp.asarray(mask)


@pytest.fixture(scope="module")
def setup():
    config = k_posterior_config("tiny", K_MAX)
    with_head = KPosterior(config, K_MAX, evidence_restarts=2, evidence_steps=5, noise_head=True)
    without = KPosterior(config, K_MAX, evidence_restarts=2, evidence_steps=5)
    points, mask = _tasks()
    params = with_head.init(jax.random.PRNGKey(1), points, mask)
    assert any("noise_out" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
    # the output layers start at zero (the head changes nothing until trained): give them weights
    leaves = jax.tree_util.tree_leaves_with_path(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    key_of = {jax.tree_util.keystr(p): k for (p, _), k in zip(leaves, keys, strict=True)}
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: (
            jax.random.normal(key_of[jax.tree_util.keystr(p)], v.shape) * 0.5
            if "_out" in jax.tree_util.keystr(p)
            else v
        ),
        params,
    )
    apply = jax.jit(with_head.apply)
    return with_head, without, params, apply, points, mask


@pytest.mark.slow  # compiles the evidence fits
def test_unknown_noise_is_the_model_without_the_head(setup):
    with_head, without, params, apply, points, mask = setup
    shared = {"params": {k: v for k, v in params["params"].items() if not k.startswith("noise_")}}
    ref = np.asarray(without.apply(shared, points, mask))
    np.testing.assert_allclose(np.asarray(with_head.apply(params, points, mask)), ref, atol=1e-5)
    # NaN per task: that task is read as unknown, the others as known
    noise_B = jnp.array([1.0, jnp.nan, 1.0, jnp.nan, 1.0, 1.0])
    mixed = np.asarray(apply(params, points, mask, noise_B))
    unknown = np.isnan(np.asarray(noise_B))
    np.testing.assert_allclose(mixed[unknown], ref[unknown], atol=1e-5)
    # the head moves the known tasks' answer (by more than rounding)
    assert np.abs(mixed[~unknown] - ref[~unknown]).max() > 1e-2
    np.testing.assert_allclose(np.exp(mixed).sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow  # shares the module's compiled model
@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_invariant_to_scaling_points_and_noise_together(setup, c):
    _, _, params, apply, points, mask = setup
    noise_B = jnp.full((points.shape[0],), 0.7)
    ref = np.asarray(apply(params, points, mask, noise_B))
    shift = jnp.array([[[3.0, -2.0]]])
    out = np.asarray(apply(params, c * points + c * shift, mask, c**2 * noise_B))
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # the noise level is read: another noise variance at the same points changes the answer
    other = np.asarray(apply(params, points, mask, 9.0 * noise_B))
    assert np.abs(other - ref).max() > 1e-2


@pytest.mark.slow  # runs the evidence fits eagerly
def test_noise_needs_the_head_and_the_head_needs_the_evidence():
    config = k_posterior_config("tiny", K_MAX)
    points, mask = _tasks(b=2)
    without = KPosterior(config, K_MAX, evidence_restarts=1, evidence_steps=1)
    params = without.init(jax.random.PRNGKey(0), points, mask)
    with pytest.raises(ValueError, match="noise_head=True"):
        without.apply(params, points, mask, jnp.ones(2))
    with pytest.raises(ValueError, match="evidence_restarts >= 1"):
        KPosterior(config, K_MAX, noise_head=True).init(jax.random.PRNGKey(0), points, mask)


@pytest.mark.slow  # initialises a model with the evidence
def test_posterior_over_k_refuses_noise_for_a_checkpoint_without_the_head(tmp_path):
    from tgmm_jax import number_of_components as nc

    config = k_posterior_config("tiny", K_MAX)
    model = KPosterior(config, K_MAX, evidence_restarts=1, evidence_steps=1)
    points, mask = _tasks(b=1)
    params = model.init(jax.random.PRNGKey(0), points, mask)
    nc.save_k_posterior(str(tmp_path), model, params, {"n_min": 8, "n_max": 32}, step=0)
    ckpt = nc.load_k_posterior(str(tmp_path))
    with pytest.raises(ValueError, match="no noise head"):
        nc.posterior_over_k(ckpt, [np.asarray(points[0])], noise_variance=1.0)


@pytest.mark.slow  # trains two tiny runs and compiles both
def test_training_the_head_alone_freezes_the_rest_and_it_round_trips(tmp_path):
    from experiments import train_k_posterior as tkp
    from tgmm_jax import number_of_components as nc

    base = dict(size="tiny", num_layers=0, k_max=K_MAX, dims=[2], n_min=12, n_max=16, tasks_per_k=2,
                learning_rate=3e-3, warmup_steps=1, weight_decay=1e-2, seed=0, steps=2,
                evidence_restarts=1, evidence_steps=2)  # fmt: skip
    tkp.train(str(tmp_path / "source"), base, checkpoint_every=2)
    cfg = {**base, "seed": 1, "steps": 3, "noise_head": True, "train_noise_head_only": True,
           "init_from": str(tmp_path / "source")}  # fmt: skip
    tkp.train(str(tmp_path / "head"), cfg, checkpoint_every=3)
    _, source, _ = tkp.load(str(tmp_path / "source"))
    model, trained, _ = tkp.load(str(tmp_path / "head"))
    got = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(trained)}
    for path, value in jax.tree_util.tree_leaves_with_path(source):  # weight decay did not touch them
        np.testing.assert_array_equal(got[jax.tree_util.keystr(path)], value)
    head = {k: v for k, v in got.items() if "['noise_" in k}
    assert head and np.abs(np.asarray(head["['params']['noise_out']['kernel']"])).max() > 0  # it trained
    # export and reload: the json carries the head, and posterior_over_k reads the noise in the data's units
    nc.save_k_posterior(str(tmp_path / "export"), model, trained, cfg, step=3)
    ckpt = nc.load_k_posterior(str(tmp_path / "export"))
    assert ckpt.model.noise_head
    points, _ = _tasks(seed=3, b=3, n=16)
    xs = [np.asarray(p, np.float64) for p in points]
    ref = nc.posterior_over_k(ckpt, xs, noise_variance=[1.0, 2.0, np.nan])
    scaled = nc.posterior_over_k(ckpt, [50.0 * x + 7.0 for x in xs], noise_variance=[2500.0, 5000.0, np.nan])
    np.testing.assert_allclose(scaled, ref, atol=1e-4)
    unknown = nc.posterior_over_k(ckpt, xs)
    np.testing.assert_allclose(ref[2], unknown[2], atol=1e-5)
    with_missing = [xs[0].copy()]
    with_missing[0][0, 0] = np.nan  # a dataset with missing values is read as if its noise were unknown
    np.testing.assert_allclose(
        nc.posterior_over_k(ckpt, with_missing, noise_variance=1.0), nc.posterior_over_k(ckpt, with_missing)
    )
    with pytest.raises(ValueError, match="finite and > 0"):
        nc.posterior_over_k(ckpt, xs, noise_variance=-1.0)
    with pytest.raises(ValueError, match="one per dataset"):
        nc.posterior_over_k(ckpt, xs, noise_variance=[1.0, 1.0])


def test_study_scores_the_known_noise_model_and_bic_and_reports_both():
    from experiments.studies.k_posterior import run as study
    from experiments.studies.k_posterior.report import k_posterior_section
    from tests.test_k_posterior import _blocks_with_bayes

    blocks = _blocks_with_bayes()  # K = 1, 2 at (2, 32); model right on all 4 tasks, BIC wrong on 1
    for (_, _, k), block in blocks.items():
        noise_lp = np.log(np.full((2, study.K_MAX), 0.1 / (study.K_MAX - 1)))
        noise_lp[:, k - 1] = np.log(0.9)
        noise_lp[1] = np.log(np.full(study.K_MAX, 0.1 / (study.K_MAX - 1)))
        noise_lp[1, 4] = np.log(0.9)  # task 1 of each cell: K = 5, wrong
        known_bic = np.full((2, study.K_MAX), 50.0)
        known_bic[:, k - 1] = 0.0  # BIC told the noise: right on both
        block["model_noise"] = {"log_probs": noise_lp}
        block["bic_known"] = {"bic": known_bic, "aic": known_bic, "loglik": -known_bic}
    saved = study.analyse(blocks, [2], [32], 2, 32, 0.03)
    acc = saved["summary"]["accuracy"]
    assert acc["model_noise"] == 0.5 and acc["bic_known"] == 1.0 and acc["bic"] == 0.75
    np.testing.assert_allclose(
        saved["summary"]["logloss"]["model_noise"], -0.5 * (np.log(0.9) + np.log(0.1 / (study.K_MAX - 1)))
    )
    target = saved["targets"]["noise_known_accuracy_beats_bic_by_10_points_n_le_128"]
    assert target["model_noise_minus_bic"] == pytest.approx(-0.25)
    assert target["model_noise_minus_bic_known"] == pytest.approx(-0.5) and not target["met"]
    cell = saved["cells"][1]
    assert cell["bayes"]["accuracy"]["model_noise"] == 0.5 and cell["bayes"]["accuracy"]["bic_known"] == 1.0
    assert saved["targets"]["accuracy_beats_bic_by_10_points_n_le_128"]["model_minus_bic"] == pytest.approx(
        0.25
    )
    saved["settings"].update({"workdir": "runs/ev", "runs": {"model": {"steps": 3}}})
    text = "\n".join(k_posterior_section(saved))
    assert "| learned, noise known | BIC, noise known |" in text
    assert "K accuracy over BIC at N ≤ 128: -25.0 ± " in text and "the gain is -50.0 ± " in text
    assert "{" not in text


@pytest.mark.slow  # compiles the batched EM
def test_known_noise_bic_matches_closed_forms():
    from scipy.stats import multivariate_normal

    from experiments.studies.k_posterior import run as study

    rng = np.random.default_rng(0)
    n, d = 40, 2
    centres = np.array([[-20.0, 0.0], [20.0, 0.0]])
    points = centres[np.arange(n) % 2] + rng.normal(size=(n, d))
    out = study.known_noise_criteria(points[None], k_max=2, n_init=3)
    # K = 1: the mean, unit variance, d parameters
    ll1 = multivariate_normal(points.mean(0), np.eye(d)).logpdf(points).sum()
    np.testing.assert_allclose(out["loglik"][0, 0], ll1, rtol=1e-5)
    np.testing.assert_allclose(out["bic"][0, 0], -2 * ll1 + d * np.log(n), rtol=1e-5)
    # K = 2, clusters 40 noise sd apart: the split by sign, each half's mean, weights 1/2 (the EM optimum)
    halves = [points[points[:, 0] < 0], points[points[:, 0] > 0]]
    ll2 = sum(
        np.log(0.5) * len(h) + multivariate_normal(h.mean(0), np.eye(d)).logpdf(h).sum() for h in halves
    )
    np.testing.assert_allclose(out["loglik"][0, 1], ll2, rtol=1e-5)
    np.testing.assert_allclose(out["aic"][0, 1], -2 * ll2 + 2 * (2 * d + 1), rtol=1e-5)
