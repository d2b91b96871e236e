"""Parameter models above K = 6 (issue 26): matching beyond the brute-force K inside the loss (and its gradient),
and a warm start that grows the K-indexed tables of a checkpoint trained on fewer Ks."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tgmm_jax import losses, metrics
from tgmm_jax.models import make_model
from tgmm_jax.models.config import model_config
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train import sharding
from tgmm_jax.train import state as state_lib


def _brute_force_index(cost_KxK: np.ndarray) -> np.ndarray:
    k = cost_KxK.shape[0]
    best = min(itertools.permutations(range(k)), key=lambda p: sum(cost_KxK[p[j], j] for j in range(k)))
    return np.asarray(best)


def test_optimal_assignment_above_brute_force_k_is_exact_under_jit_and_grad():
    """K = 7 (5040 permutations, enumerated in NumPy): the Hungarian solver's matching has the least total cost,
    inside jit, and a loss through it is differentiable (the indices carry no gradient)."""
    rng = np.random.default_rng(0)
    cost_BxKxK = rng.random((4, 7, 7)).astype(np.float32)
    got_BxK = np.asarray(jax.jit(metrics.optimal_assignment)(jnp.asarray(cost_BxKxK)))
    for b in range(4):
        want = _brute_force_index(cost_BxKxK[b])
        total = cost_BxKxK[b][got_BxK[b], np.arange(7)].sum()
        np.testing.assert_allclose(total, cost_BxKxK[b][want, np.arange(7)].sum(), rtol=1e-6)

    def matched_cost(c_BxKxK):
        index_BxK = metrics.optimal_assignment(c_BxKxK)
        return jnp.sum(jnp.take_along_axis(c_BxKxK, index_BxK[:, None, :], axis=1))

    grad = np.asarray(jax.jit(jax.grad(matched_cost))(jnp.asarray(cost_BxKxK)))
    # d(sum of the matched entries)/d(cost) is 1 on the matched entries, 0 elsewhere
    assert np.all(grad.sum(axis=(1, 2)) == 7) and set(np.unique(grad)) <= {0.0, 1.0}


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 12, 16])
def test_hungarian_matches_scipy(k):
    """The jit-native Hungarian solver against SciPy's ``linear_sum_assignment`` on random costs (continuous, so
    the optimum is unique), batched by vmap, and on integer costs full of ties (compared by total cost)."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(k)
    solve = jax.jit(jax.vmap(metrics.hungarian))
    continuous, ties = rng.normal(size=(6, k, k)) * 10, rng.integers(0, 3, size=(6, k, k)).astype(float)
    for cost_BxKxK, unique_optimum in ((continuous, True), (ties, False)):
        got_BxK = np.asarray(solve(jnp.asarray(cost_BxKxK, jnp.float32)))
        for b, cost in enumerate(cost_BxKxK):
            assert sorted(got_BxK[b]) == list(range(k))  # a permutation
            rows, cols = linear_sum_assignment(cost)
            np.testing.assert_allclose(
                cost[got_BxK[b], np.arange(k)].sum(), cost[rows, cols].sum(), atol=1e-4
            )
            if unique_optimum:
                want = np.empty(k, int)
                want[cols] = rows
                np.testing.assert_array_equal(got_BxK[b], want)


def test_hungarian_respects_the_component_mask_and_non_finite_costs():
    """Padded components go to padded slots (``masked_match_cost``), and a NaN or inf entry is never matched
    when a finite assignment exists: the same matching as brute force over all 8! permutations."""
    rng = np.random.default_rng(1)
    k = 8
    sq_dist_BxKxK = rng.random((3, k, k)).astype(np.float32) * 4
    mask_BxK = np.arange(k)[None, :] < np.array([8, 6, 3])[:, None]
    sq_dist_BxKxK[0, 2, 5] = np.nan
    sq_dist_BxKxK[0, 4, 1] = np.inf
    cost_BxKxK = np.asarray(metrics.masked_match_cost(jnp.asarray(sq_dist_BxKxK), jnp.asarray(mask_BxK)))
    got_BxK = np.asarray(jax.jit(metrics.optimal_assignment)(jnp.asarray(cost_BxKxK)))
    for b in range(3):
        finite = np.where(np.isfinite(cost_BxKxK[b]), cost_BxKxK[b], 1e30)
        want = _brute_force_index(finite)
        np.testing.assert_allclose(
            finite[got_BxK[b], np.arange(k)].sum(), finite[want, np.arange(k)].sum(), rtol=1e-6
        )
        real = int(mask_BxK[b].sum())
        assert set(got_BxK[b, :real]) == set(range(real))  # real components matched to real slots
    assert got_BxK[0, 5] != 2 and got_BxK[0, 1] != 4


_SHARDED_MATCHING = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy.optimize import linear_sum_assignment
from tgmm_jax import metrics
from tgmm_jax.train import sharding
mesh = sharding.make_mesh()
cost = np.random.default_rng(0).normal(size=(16, 8, 8)).astype(np.float32)
x = jax.device_put(jnp.asarray(cost), NamedSharding(mesh, P("data")))
fn = jax.jit(metrics.optimal_assignment)
hlo = fn.lower(x).compile().as_text()
got = np.asarray(fn(x))
want = []
for c in cost:
    rows, cols = linear_sum_assignment(c)
    w = np.empty(8, int); w[cols] = rows; want.append(w.tolist())
print(json.dumps({"devices": len(x.sharding.device_set), "same": got.tolist() == want,
                  "callbacks": hlo.count("callback"), "gathers": hlo.count("all-gather")}))
"""


@pytest.mark.subprocess
def test_matching_above_brute_force_k_runs_sharded_without_a_host_callback():
    """On a ('data',) mesh of 4 CPU devices, K = 8 matching compiles with no host callback and no gather of the
    batch (each device solves its own tasks) and gives SciPy's matching."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_MATCHING], cwd=root, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"devices": 4, "same": True, "callbacks": 0, "gathers": 0}, report


@pytest.mark.slow
def test_loss_trains_on_k8_tasks():
    """The est_matched loss and its gradient are finite on K = 7, 8 tasks (Hungarian matching in the loss)."""
    spec = TaskSpec(dim=4, ks=(7, 8), n_max=32, n_min=32, cos_threshold=1.0)
    cfg = model_config("tiny", backbone="set", readin="normalized", readout="cluster", slot_init="farthest")
    model = make_model(cfg, spec)
    task = sample_tasks(jax.random.key(0), spec, 2)
    params = model.init(jax.random.key(1), task.points, task.point_mask, task.num_components)["params"]

    def loss(p):
        out = model.apply({"params": p}, task.points, task.point_mask, task.num_components)
        return losses.compute_loss("est_matched", out, task, resp_weight=1.0)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def _state_and_params(ks, seed):
    spec = TaskSpec(dim=4, ks=ks, n_max=24, n_min=24, cos_threshold=1.0)
    cfg = model_config("tiny", backbone="set", readin="normalized", readout="cluster", slot_init="learned")
    model = make_model(cfg, spec)
    mesh, tx = sharding.make_mesh(), optax.adam(1e-3)
    state = state_lib.create_train_state(jax.random.key(seed), model, tx, spec, ("loss",), mesh)
    return spec, model, state, tx, mesh


@pytest.mark.slow
def test_warm_start_grows_the_k_tables_and_answers_the_trained_ks_as_before():
    """A checkpoint on ks = (2, 3) warm-starts a model on ks = (2, 3, 4): the task embedding and slot tables
    keep the trained block, the new K's rows keep the fresh init, every other parameter is the checkpoint's,
    and on K = 2, 3 tasks the grown model's output equals the checkpoint's (learned slots: the slot table is
    read, so a wrong copy would show)."""
    small_spec, small_model, small_state, _, _ = _state_and_params((2, 3), seed=0)
    spec, model, state, tx, mesh = _state_and_params((2, 3, 4), seed=1)
    warm = state_lib.warm_started(state, small_state.params, "src", tx, mesh, (2, 3), (2, 3, 4))
    embed = np.asarray(warm.params["read_in"]["task_embed"]["embedding"])
    np.testing.assert_array_equal(
        embed[:2], np.asarray(small_state.params["read_in"]["task_embed"]["embedding"])
    )
    np.testing.assert_array_equal(embed[2], np.asarray(state.params["read_in"]["task_embed"]["embedding"])[2])
    slots = np.asarray(warm.params["read_out"]["slots"])
    fresh_slots = np.asarray(state.params["read_out"]["slots"])
    np.testing.assert_array_equal(slots[:2, :3], np.asarray(small_state.params["read_out"]["slots"]))
    np.testing.assert_array_equal(slots[2], fresh_slots[2])
    np.testing.assert_array_equal(slots[:2, 3], fresh_slots[:2, 3])
    task = sample_tasks(jax.random.key(7), small_spec, 3)
    before = small_model.apply(
        {"params": small_state.params}, task.points, task.point_mask, task.num_components
    )
    pad = spec.k_max - small_spec.k_max
    after = model.apply({"params": warm.params}, task.points, task.point_mask, task.num_components)
    np.testing.assert_allclose(np.asarray(after.means)[:, :3], np.asarray(before.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(after.to_params().weights)[:, :3], np.asarray(before.to_params().weights), atol=1e-6
    )
    assert pad == 1 and np.all(np.asarray(after.to_params().weights)[:, 3] == 0)


@pytest.mark.slow
def test_warm_start_refuses_ks_that_do_not_extend_the_checkpoints():
    _, _, small_state, _, _ = _state_and_params((2, 3), seed=0)
    _, _, state, tx, mesh = _state_and_params((3, 4, 5), seed=1)
    with pytest.raises(ValueError, match=r"may only add Ks after them"):
        state_lib.warm_started(state, small_state.params, "src", tx, mesh, (2, 3), (3, 4, 5))
    # without the source's ks, a grown table is an ordinary shape mismatch
    _, _, grown_state, tx, mesh = _state_and_params((2, 3, 4), seed=1)
    with pytest.raises(ValueError, match="another tree or shape"):
        state_lib.warm_started(grown_state, small_state.params, "src", tx, mesh)
