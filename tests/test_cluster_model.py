"""The dimension-free clustering TGMM (normalised read-in + clustering read-out) and EM refinement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.baseline_helpers import numpy_em
from tgmm_jax import losses
from tgmm_jax.gmm import MixtureParams, mean_log_likelihood
from tgmm_jax.models import check_num_components, make_model, model_config
from tgmm_jax.models.cluster_readout import (
    farthest_first,
    greedy_seeds,
    smoothed_farthest_first,
)
from tgmm_jax.models.normalize import normalize_tasks
from tgmm_jax.refine import em_refine
from tgmm_jax.tasks import TaskSpec, sample_tasks

KS = (2, 3, 4, 5)


def _config(**overrides):
    fields = dict(
        backbone="set",
        num_layers=1,
        width=32,
        num_heads=2,
        readin="normalized",
        readout="cluster",
        project_rank=6,
        cluster_iters=2,
    )
    fields.update(overrides)
    return model_config("tiny", **fields)


@pytest.fixture(
    scope="module",
    params=[
        dict(slot_init="learned"),
        dict(slot_init="farthest+greedy+smooth3"),
        dict(slot_init="farthest+greedy+smooth3", seed_combine="average"),
    ],
    ids=["learned", "seeded", "seeded-average"],
)
def setup(request):
    spec = TaskSpec(dim=5, ks=KS, n_max=40, n_min=20)
    model = make_model(_config(**request.param), spec)
    task = sample_tasks(jax.random.key(0), spec, 2)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    # move the parameters off their init so the checks do not pass by a symmetric start
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), params)
    apply = jax.jit(lambda p, x, m, k: model.apply({"params": p}, x, m, k))
    return model, params, task, apply


@pytest.mark.slow
def test_translation_moves_means_exactly(setup):
    _, params, task, apply = setup
    shift_D = jnp.asarray([3.0, -7.0, 11.0, 0.5, -2.0])
    a = apply(params, task.points, task.point_mask, task.num_components)
    b = apply(params, task.points + shift_D[None, None, :], task.point_mask, task.num_components)
    real = np.asarray(task.component_mask)
    # exact up to float32 rounding: the shifted inputs x + c are themselves rounded (~1e-6 of |x + c|), and a
    # point near a soft boundary passes that on; measured max deviation 1.2e-4 (one of 140), the rest ~1e-6
    moved = np.asarray(b.means - a.means)[real]
    np.testing.assert_allclose(moved, np.broadcast_to(np.asarray(shift_D), moved.shape), atol=2e-4)
    assert np.median(np.abs(moved - np.asarray(shift_D))) < 1e-5
    np.testing.assert_allclose(
        np.asarray(b.to_params().weights), np.asarray(a.to_params().weights), atol=1e-5
    )
    assert float(jnp.max(jnp.abs(b.means - a.means))) > 1.0  # the means did move


@pytest.mark.slow
def test_rotation_rotates_means(setup):
    _, params, task, apply = setup
    q_DxD, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    q_DxD = jnp.asarray(q_DxD, jnp.float32)
    a = apply(params, task.points, task.point_mask, task.num_components)
    b = apply(params, task.points @ q_DxD, task.point_mask, task.num_components)
    real = np.asarray(task.component_mask)
    np.testing.assert_allclose(np.asarray(b.means)[real], np.asarray(a.means @ q_DxD)[real], atol=2e-3)
    np.testing.assert_allclose(
        np.asarray(b.to_params().weights), np.asarray(a.to_params().weights), atol=1e-4
    )


@pytest.mark.slow
def test_point_order_and_padding_change_nothing(setup):
    _, params, task, apply = setup
    a = apply(params, task.points, task.point_mask, task.num_components)
    rng = np.random.default_rng(1)
    perm = rng.permutation(task.points.shape[1])
    # extra padded points holding garbage, interleaved with the real ones
    pad = 7
    points = jnp.concatenate([task.points[:, perm], jnp.full((task.points.shape[0], pad, 5), 1e3)], axis=1)
    mask = jnp.concatenate([task.point_mask[:, perm], jnp.zeros((task.points.shape[0], pad), bool)], axis=1)
    order = rng.permutation(points.shape[1])
    b = apply(params, points[:, order], mask[:, order], task.num_components)
    np.testing.assert_allclose(np.asarray(b.means), np.asarray(a.means), atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(b.to_params().weights), np.asarray(a.to_params().weights), atol=1e-5
    )


@pytest.mark.slow
def test_one_parameter_set_serves_every_dimension(setup):
    model, params, _, _ = setup
    for dim in (1, 3, 100):
        spec = TaskSpec(dim=dim, ks=(2,), n_max=30)
        task = sample_tasks(jax.random.key(dim), spec, 2)
        out = model.apply({"params": params}, task.points, task.point_mask, task.num_components)
        assert out.means.shape == (2, max(KS), dim)
        assert bool(jnp.all(jnp.isfinite(out.means)))


@pytest.mark.slow
def test_parameters_do_not_depend_on_dimension():
    shapes = []
    for dim in (3, 100):
        spec = TaskSpec(dim=dim, ks=KS, n_max=20)
        task = sample_tasks(jax.random.key(0), spec, 1)
        params = make_model(_config(), spec).init(
            jax.random.key(0), task.points, task.point_mask, task.num_components
        )
        shapes.append(jax.tree.map(lambda p: p.shape, params))
    assert shapes[0] == shapes[1]


@pytest.mark.slow
def test_fixed_dimension_model_refuses_other_dimensions():
    spec = TaskSpec(dim=4, ks=KS, n_max=20)
    model = make_model(model_config("tiny", backbone="set"), spec)
    task = sample_tasks(jax.random.key(0), spec, 1)
    params = model.init(jax.random.key(0), task.points, task.point_mask, task.num_components)
    with pytest.raises(ValueError, match="D=4"):
        model.apply(params, task.points[..., :3], task.point_mask, task.num_components)


def test_unknown_k_is_refused():
    with pytest.raises(ValueError, match=r"\[7\] not in"):
        check_num_components(np.array([2, 7]), KS)


@pytest.mark.slow
def test_responsibilities_are_a_distribution_over_real_components(setup):
    _, params, task, apply = setup
    out = apply(params, task.points, task.point_mask, task.num_components)
    resp = np.exp(np.asarray(out.log_responsibilities))
    np.testing.assert_allclose(resp.sum(-1), 1.0, atol=1e-5)
    padded = ~np.asarray(task.component_mask)
    assert np.all(resp.transpose(0, 2, 1)[padded] < 1e-12)


@pytest.mark.slow
def test_responsibility_loss_matches_brute_force(setup):
    _, params, task, apply = setup
    out = apply(params, task.points, task.point_mask, task.num_components)
    index_BxK = np.asarray(losses.match_components(out, task))
    log_resp = np.asarray(out.log_responsibilities)
    labels, mask = np.asarray(task.labels), np.asarray(task.point_mask)
    total = count = 0.0
    for b in range(labels.shape[0]):
        for n in range(labels.shape[1]):
            if mask[b, n]:
                total -= log_resp[b, n, index_BxK[b, labels[b, n]]]
                count += 1
    np.testing.assert_allclose(float(losses.responsibility_loss(out, task)), total / count, rtol=1e-5)
    # soft labels: one-hot labels give the same value; random probabilities the brute-force cross-entropy
    k_max = task.weights.shape[1]
    onehot = jax.nn.one_hot(task.labels, k_max) * task.point_mask[..., None]
    np.testing.assert_allclose(
        float(losses.responsibility_loss(out, task, label_probs_BxNxK=onehot)), total / count, rtol=1e-5
    )
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(k_max), size=labels.shape) * np.asarray(task.component_mask)[:, None, :]
    probs = probs / probs.sum(-1, keepdims=True) * mask[..., None]
    soft = 0.0
    for b in range(labels.shape[0]):
        for n in range(labels.shape[1]):
            for j in range(k_max):
                if probs[b, n, j] > 0:
                    soft -= probs[b, n, j] * log_resp[b, n, index_BxK[b, j]]
    value = losses.responsibility_loss(out, task, label_probs_BxNxK=jnp.asarray(probs, jnp.float32))
    np.testing.assert_allclose(float(value), soft / count, rtol=1e-5)
    with pytest.raises(ValueError, match="label_probs"):
        losses.responsibility_loss(out, task, label_probs_BxNxK=jnp.asarray(probs[:, :-1], jnp.float32))


@pytest.mark.slow
def test_normalisation_pads_small_dimensions_and_centres():
    spec = TaskSpec(dim=2, ks=(3,), n_max=50)
    task = sample_tasks(jax.random.key(2), spec, 3)
    norm = normalize_tasks(task.points, task.point_mask, rank=4)
    assert norm.coords_BxNxR.shape == (3, 50, 4)
    np.testing.assert_array_equal(np.asarray(norm.coords_BxNxR[..., 2:]), 0.0)
    mask = np.asarray(task.point_mask)[..., None]
    mean = (np.asarray(norm.coords_BxNxR) * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    # the top coordinate has unit variance after scaling (scale = sqrt of the top eigenvalue)
    var = (np.asarray(norm.coords_BxNxR[..., 0]) ** 2 * mask[..., 0]).sum(1) / mask[..., 0].sum(1)
    np.testing.assert_allclose(var, 1.0, rtol=1e-4)


@pytest.mark.parametrize("variant", ["isotropic", "anisotropic"])
@pytest.mark.slow
def test_em_refine_matches_float64_numpy_em(variant):
    """``em_refine`` (the mixture core's step) against textbook EM in float64 NumPy, task by task."""
    spec = TaskSpec(dim=5, ks=KS, n_max=64, variant=variant)
    task = sample_tasks(jax.random.key(3), spec, 4)
    noise = jax.random.normal(jax.random.key(1), task.means.shape)
    weights = jnp.where(task.component_mask, 1.0, 0.0)
    weights = weights / weights.sum(-1, keepdims=True)
    means = jnp.where(task.component_mask[..., None], task.means + 2.0 * noise, 0.0)
    init = MixtureParams(
        weights, means, task.scales if variant == "anisotropic" else None, task.component_mask
    )
    ours = em_refine(task.points, task.point_mask, init, 5)
    tol = 1e-5 if variant == "isotropic" else 1e-3  # variances: E[x^2] - mu^2 in float32
    for b in range(task.points.shape[0]):
        k = int(task.num_components[b])
        x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
        var0 = None if variant == "isotropic" else np.asarray(task.scales[b, :k], np.float64) ** 2
        w, mu, var, _, _ = numpy_em(
            x, np.asarray(weights[b, :k], np.float64), np.asarray(means[b, :k], np.float64), var0, 5, 0.0
        )
        np.testing.assert_allclose(np.asarray(ours.means[b, :k]), mu, atol=tol * 10, rtol=tol)
        np.testing.assert_allclose(np.asarray(ours.weights[b, :k]), w, atol=tol)
        assert np.all(np.asarray(ours.weights[b, k:]) == 0)
        if variant == "anisotropic":
            np.testing.assert_allclose(np.asarray(ours.scales[b, :k]), np.sqrt(var), rtol=tol)
    moved = float(jnp.max(jnp.abs(ours.means - means)))
    assert moved > 0.5  # the steps did something


def test_farthest_first_seeds_match_brute_force():
    rng = np.random.default_rng(3)
    coords_BxNxR = rng.standard_normal((4, 25, 3)).astype(np.float32)
    mask_BxN = rng.random((4, 25)) < 0.7
    coords_BxNxR[~mask_BxN] = 1e3  # padded points hold garbage far away; they must never be picked
    seeds_BxKxR = np.asarray(farthest_first(jnp.asarray(coords_BxNxR), jnp.asarray(mask_BxN), 4))
    for b in range(4):
        real_MxR = coords_BxNxR[b][mask_BxN[b]]
        dist_M = np.sum(real_MxR**2, -1)
        expected = []
        for _ in range(4):
            i = int(np.argmax(dist_M))
            expected.append(real_MxR[i])
            dist_M = np.minimum(dist_M, np.sum((real_MxR - real_MxR[i]) ** 2, -1))
        np.testing.assert_allclose(seeds_BxKxR[b], np.stack(expected), rtol=1e-6)


@pytest.mark.parametrize("slot_init", ["kmeans", "smooth1", "smooth", "farthest+learned", "farthest+"])
def test_unknown_slot_init_is_refused(slot_init):
    with pytest.raises(ValueError, match="slot_init"):
        _config(slot_init=slot_init)


@pytest.mark.slow
def test_smoothed_seeds_match_brute_force():
    rng = np.random.default_rng(6)
    coords_BxNxR = rng.standard_normal((3, 20, 2)).astype(np.float32)
    mask_BxN = rng.random((3, 20)) < 0.8
    coords_BxNxR[~mask_BxN] = 0.0  # padded points near everything: never a neighbour
    seeds_BxKxR = np.asarray(smoothed_farthest_first(jnp.asarray(coords_BxNxR), jnp.asarray(mask_BxN), 3, 4))
    for b in range(3):
        real_MxR = coords_BxNxR[b][mask_BxN[b]].astype(np.float64)
        sq_MxM = ((real_MxR[:, None] - real_MxR[None]) ** 2).sum(-1)
        smooth_MxR = np.stack([real_MxR[np.argsort(row)[:4]].mean(0) for row in sq_MxM])
        dist_M, expected = (smooth_MxR**2).sum(-1), []
        for _ in range(3):
            i = int(np.argmax(dist_M))
            expected.append(smooth_MxR[i])
            dist_M = np.minimum(dist_M, ((smooth_MxR - smooth_MxR[i]) ** 2).sum(-1))
        np.testing.assert_allclose(seeds_BxKxR[b], np.stack(expected), rtol=1e-5, atol=1e-6)


def test_greedy_seeds_match_brute_force():
    rng = np.random.default_rng(4)
    coords_BxNxR = rng.standard_normal((4, 25, 3)).astype(np.float32)
    mask_BxN = rng.random((4, 25)) < 0.7
    coords_BxNxR[~mask_BxN] = 0.0  # padded points sit at the centre, the best seed if they were counted
    seeds_BxKxR = np.asarray(greedy_seeds(jnp.asarray(coords_BxNxR), jnp.asarray(mask_BxN), 4))
    for b in range(4):
        real_MxR = coords_BxNxR[b][mask_BxN[b]].astype(np.float64)
        chosen = []
        for _ in range(4):
            costs = [
                np.sum(np.min(((real_MxR[:, None] - real_MxR[chosen + [c]][None]) ** 2).sum(-1), axis=1))
                for c in range(len(real_MxR))
            ]
            chosen.append(int(np.argmin(costs)))
        np.testing.assert_allclose(seeds_BxKxR[b], real_MxR[chosen], rtol=1e-6)


@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.slow
def test_selection_likelihood_matches_scipy(anisotropic):
    """The likelihood the read-out picks seedings by (gmm.mean_log_likelihood on batched, padded tasks)."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(5)
    points_BxNxD = rng.standard_normal((2, 9, 3))
    mask_BxN = np.arange(9)[None] < np.array([[9], [6]])
    component_mask_BxK = np.arange(4)[None] < np.array([[4], [2]])
    logits_BxK = rng.standard_normal((2, 4))
    means_BxKxD = rng.standard_normal((2, 4, 3))
    scales_BxKxD = np.exp(0.3 * rng.standard_normal((2, 4, 3))) if anisotropic else np.ones((2, 4, 3))
    weights_BxK = jax.nn.softmax(
        jnp.where(component_mask_BxK, jnp.asarray(logits_BxK, jnp.float32), -1e30), -1
    )
    ours = mean_log_likelihood(
        jnp.asarray(points_BxNxD, jnp.float32),
        jnp.asarray(mask_BxN),
        MixtureParams(
            weights_BxK,
            jnp.asarray(means_BxKxD, jnp.float32),
            jnp.asarray(scales_BxKxD, jnp.float32) if anisotropic else None,
            jnp.asarray(component_mask_BxK),
        ),
    )
    for b in range(2):
        k = int(component_mask_BxK[b].sum())
        w = np.exp(logits_BxK[b, :k]) / np.exp(logits_BxK[b, :k]).sum()
        x = points_BxNxD[b][mask_BxN[b]]
        dens = sum(
            w[j] * multivariate_normal(means_BxKxD[b, j], np.diag(scales_BxKxD[b, j] ** 2)).pdf(x)
            for j in range(k)
        )
        np.testing.assert_allclose(float(ours[b]), np.mean(np.log(dens)), rtol=1e-5)


@pytest.mark.slow
def test_best_of_two_seedings_keeps_the_likelier_estimate_per_task():
    spec = TaskSpec(dim=4, ks=KS, n_max=40)
    task = sample_tasks(jax.random.key(2), spec, 3)  # 3 tasks per K
    b_total = task.points.shape[0]
    models = {
        init: make_model(_config(slot_init=init), spec) for init in ("farthest", "greedy", "farthest+greedy")
    }
    params = models["farthest+greedy"].init(
        jax.random.key(1), task.points, task.point_mask, task.num_components
    )
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape), params)
    outs = {
        init: m.apply(params, task.points, task.point_mask, task.num_components) for init, m in models.items()
    }
    from scipy.special import logsumexp

    lik = {}
    for init in ("farthest", "greedy"):  # mean log-likelihood of the real points, unit variance
        est = outs[init].to_params()
        sq_BxNxK = np.sum((np.asarray(task.points)[:, :, None] - np.asarray(est.means)[:, None]) ** 2, -1)
        log_w_BxK = np.log(np.maximum(np.asarray(est.weights), 1e-30))
        point_BxN = logsumexp(log_w_BxK[:, None] - 0.5 * sq_BxNxK, axis=-1)
        mask_BxN = np.asarray(task.point_mask)
        lik[init] = np.sum(point_BxN * mask_BxN, -1) / mask_BxN.sum(-1)
    pick_B = np.where(lik["greedy"] > lik["farthest"] + 1e-4, 1, 0)  # ties keep the first seeding
    assert 0 < pick_B.sum() < b_total, "both seedings should win somewhere, or the check is vacuous"
    for b in range(b_total):
        expected = outs[("farthest", "greedy")[pick_B[b]]]
        np.testing.assert_allclose(
            np.asarray(outs["farthest+greedy"].means[b]), np.asarray(expected.means[b]), rtol=1e-5, atol=1e-5
        )


@pytest.mark.slow
def test_averaged_seedings_are_the_likelihood_weighted_average_of_each_seedings_estimate():
    """seed_combine='average': the two seedings' estimates (each model with one seeding, same parameters)
    matched by the permutation of least squared mean distance to the kept one and averaged with
    probabilities softmax(N x mean log-likelihood): a NumPy reference."""
    import itertools

    from scipy.special import logsumexp, softmax

    spec = TaskSpec(dim=2, ks=KS, n_max=12, n_min=12, variable_n=False)
    task = sample_tasks(jax.random.key(5), spec, 3)
    models = {init: make_model(_config(slot_init=init), spec) for init in ("farthest", "greedy")}
    models["both"] = make_model(_config(slot_init="farthest+greedy", seed_combine="average"), spec)
    params = models["both"].init(jax.random.key(1), task.points, task.point_mask, task.num_components)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape), params)
    outs = {
        init: m.apply(params, task.points, task.point_mask, task.num_components).to_params()
        for init, m in models.items()
    }
    x_BxNxD = np.asarray(task.points, np.float64)
    moved = 0
    for b in range(x_BxNxD.shape[0]):
        k = int(task.num_components[b])
        fits, lls = [], []
        for init in ("farthest", "greedy"):
            w = np.asarray(outs[init].weights[b, :k], np.float64)
            mu = np.asarray(outs[init].means[b, :k], np.float64)
            sq = np.sum((x_BxNxD[b][:, None] - mu[None]) ** 2, -1)
            lls.append(
                np.sum(logsumexp(np.log(w)[None] - 0.5 * sq, axis=-1))
            )  # unit variance: constants cancel
            fits.append((w, mu))
        p = softmax(np.array(lls))
        # the slot order is the kept seeding's: the second only if better by 1e-4 nats per point (the tie rule)
        best = int(lls[1] / x_BxNxD.shape[1] > lls[0] / x_BxNxD.shape[1] + 1e-4)
        w_avg, mu_avg = np.zeros(k), np.zeros((k, 2))
        for r, (w, mu) in enumerate(fits):
            perm = min(
                itertools.permutations(range(k)),
                key=lambda q: sum(np.sum((mu[q[j]] - fits[best][1][j]) ** 2) for j in range(k)),
            )
            w_avg += p[r] * w[list(perm)]
            mu_avg += p[r] * mu[list(perm)]
        np.testing.assert_allclose(np.asarray(outs["both"].means[b, :k]), mu_avg, atol=2e-4)
        np.testing.assert_allclose(np.asarray(outs["both"].weights[b, :k]), w_avg / w_avg.sum(), atol=1e-5)
        moved += min(p) > 1e-3
    assert moved, "no task mixes its two seedings: the check would not see an average"


def _correction_setup():
    spec = TaskSpec(dim=5, ks=KS, n_max=30, n_min=20)
    task = sample_tasks(jax.random.key(4), spec, 2)
    plain = make_model(_config(slot_init="farthest+greedy"), spec)
    corrected = make_model(_config(slot_init="farthest+greedy", cluster_correction=True), spec)
    params = corrected.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]
    return plain, corrected, params, task


@pytest.mark.slow
def test_correction_head_starts_at_the_uncorrected_readout():
    plain, corrected, params, task = _correction_setup()
    readout = {
        k: v for k, v in params["read_out"].items() if not k.endswith("_correct") and k != "correct_out"
    }
    readout = {k: v for k, v in readout.items() if k not in ("ln_correct", "correct_hidden")}
    plain_params = dict(params, read_out=readout)
    a = plain.apply({"params": plain_params}, task.points, task.point_mask, task.num_components)
    b = corrected.apply({"params": params}, task.points, task.point_mask, task.num_components)
    np.testing.assert_array_equal(np.asarray(a.means), np.asarray(b.means))
    np.testing.assert_array_equal(np.asarray(a.weight_logits), np.asarray(b.weight_logits))


@pytest.mark.slow
def test_correction_head_moves_the_estimate_equivariantly():
    _, corrected, params, task = _correction_setup()
    # a nonzero correction: the head's output layer off its zero initialisation
    out_layer = params["read_out"]["correct_out"]
    out_layer = jax.tree.map(lambda p: 0.3 * jax.random.normal(jax.random.key(p.size), p.shape), out_layer)
    params = dict(params, read_out=dict(params["read_out"], correct_out=out_layer))
    apply = jax.jit(lambda x: corrected.apply({"params": params}, x, task.point_mask, task.num_components))
    base = apply(task.points)
    zero_params = dict(
        params, read_out=dict(params["read_out"], correct_out=jax.tree.map(jnp.zeros_like, out_layer))
    )
    unmoved = corrected.apply({"params": zero_params}, task.points, task.point_mask, task.num_components)
    assert float(jnp.max(jnp.abs(base.means - unmoved.means))) > 1e-2  # the learned path moves the means
    real = np.asarray(task.component_mask)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    shift = np.asarray([3.0, -7.0, 1.0, 0.5, -2.0])
    # x -> R x + t gives means -> R mu + t and the same weights. (Not x -> c x: with a known unit noise the
    # read-in sees log scale and the seed/E-step terms use it, so the model is not scale-equivariant by design.)
    for c in (1.0,):
        moved = apply(jnp.asarray(c * np.asarray(task.points) @ rotation.T + shift, jnp.float32))
        want = c * np.asarray(base.means) @ rotation.T + shift
        np.testing.assert_allclose(np.asarray(moved.means)[real], want[real], atol=2e-3 * c + 2e-3)
        np.testing.assert_allclose(
            np.asarray(jax.nn.softmax(moved.weight_logits))[real],
            np.asarray(jax.nn.softmax(base.weight_logits))[real],
            atol=2e-4,
        )
