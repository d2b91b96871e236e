"""TGMMEstimator: sklearn parity, batching, input errors, one code path with scoring, checkpoints, the command.

A tiny dimension-free clustering model is trained for a few steps into a temporary workdir (orbax) and
exported beside it; a fixed-d model (raw read-in, random init) serves the wrong-d check.
"""

import json
import os
import re
import socket

import jax
import numpy as np
import pytest
from sklearn.base import clone

from experiments import export_pretrained, fit
from tgmm_jax import pretrained, scoring
from tgmm_jax.estimator import TGMMEstimator, load_checkpoint
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.models import make_model, model_config
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.config import default_config, model_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KS = (2, 3)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("estimator")
    c = default_config()
    c.seed, c.total_steps, c.tasks_per_k = 3, 4, 4
    c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
    c.objective, c.resp_weight, c.tensorboard = "est_matched", 1.0, False
    c.eval.slot_init = "farthest+greedy"  # the workdir's model is read out as its evaluation ran it
    c.task.dim, c.task.ks, c.task.n_max = 2, KS, 32
    c.model = model_group(
        "tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8,
        readin="normalized", readout="cluster", project_rank=2, cluster_iters=2, slot_init="farthest",
    )  # fmt: skip
    workdir = str(base / "run")
    train_and_evaluate(c, workdir)
    exported = export_pretrained.export(workdir, "tiny", out_dir=str(base), command="pytest fixture")
    spec = TaskSpec(dim=2, ks=KS, n_max=16)
    raw = model_config("tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8)
    model = make_model(raw, spec)
    params = model.init(
        jax.random.key(0), np.zeros((1, 16, 2), np.float32), np.ones((1, 16), bool), np.array([2])
    )
    fixed = pretrained.save_exported(str(base / "fixed_d2"), raw, spec, params["params"])
    return {"workdir": workdir, "exported": exported, "fixed": fixed}


def _blobs(seed, n=40, d=3, k=2, sep=6.0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-sep, sep, (k, d))
    return centres[np.arange(n) % k] + rng.standard_normal((n, d))


@pytest.mark.slow
def test_exported_checkpoint_equals_the_workdir(ckpts):
    run, exp = load_checkpoint(ckpts["workdir"]), load_checkpoint(ckpts["exported"])
    assert exp.model == run.model and exp.step == run.step == 4
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(exp.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(ckpts["exported"], pretrained.CARD_FILE)) as f:
        card = f.read()
    assert "step 4 of 4" in card and "pytest fixture" in card and '"readout": "cluster"' in card
    X = _blobs(0)
    a = TGMMEstimator(2, checkpoint=ckpts["workdir"]).fit(X)
    b = TGMMEstimator(2, checkpoint=ckpts["exported"]).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)


@pytest.mark.slow
def test_export_with_other_seedings_keeps_the_weights(ckpts, tmp_path):
    from tgmm_jax.train.restore import load_run
    from tgmm_jax.trained import with_slot_init

    shipped = export_pretrained.export(
        ckpts["workdir"], "seeded", out_dir=str(tmp_path), slot_init="farthest+greedy+smooth3"
    )
    exp = load_checkpoint(shipped)
    as_evaluated = load_run(ckpts["workdir"])
    assert (as_evaluated.config.model.slot_init, as_evaluated.model_config.slot_init) == (
        "farthest",
        "farthest+greedy",
    )
    run = with_slot_init(as_evaluated, "farthest+greedy+smooth3")
    assert exp.model_config.slot_init == run.model_config.slot_init == "farthest+greedy+smooth3"
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(exp.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(shipped, pretrained.CARD_FILE)) as f:
        assert "trained with 'farthest', shipped with 'farthest+greedy+smooth3'" in f.read()
    # extra card sections (the learning targets) go before the evaluation section
    carded = export_pretrained.export(
        ckpts["workdir"], "carded", out_dir=str(tmp_path), extra="## Targets\n\n"
    )
    with open(os.path.join(carded, pretrained.CARD_FILE)) as f:
        card = f.read()
    assert card.index("## Targets") < card.index(export_pretrained.EVALUATION_HEADING)
    task = sample_tasks(jax.random.key(4), TaskSpec(dim=3, ks=KS, n_max=24), 4)
    ours = exp.model.apply({"params": exp.params}, task.points, task.point_mask, task.num_components)
    ref = run.model.apply({"params": run.params}, task.points, task.point_mask, task.num_components)
    np.testing.assert_array_equal(np.asarray(ours.means), np.asarray(ref.means))
    with pytest.raises(ValueError, match="different parameters"):
        with_slot_init(run, "learned")
    with pytest.raises(ValueError, match="not a seeding"):
        with_slot_init(run, "farthest+kmeans")


@pytest.mark.slow
def test_env_var_selects_the_users_workdir(ckpts, monkeypatch):
    monkeypatch.setenv("TGMM_CHECKPOINT_DIR", ckpts["workdir"])
    assert load_checkpoint("pretrained").name == os.path.abspath(ckpts["workdir"])
    assert TGMMEstimator(2).fit(_blobs(1)).checkpoint_name_ == os.path.abspath(ckpts["workdir"])


@pytest.mark.slow
def test_to_sklearn_gives_the_same_probabilities_and_densities(ckpts):
    X = _blobs(2, n=48, d=4, k=3, sep=4.0)
    for refine, standardize, cov in (
        ("none", False, "spherical"),
        ("em", True, "spherical"),
        ("none", True, "diag"),
    ):
        est = TGMMEstimator(
            3, checkpoint=ckpts["exported"], refine=refine, standardize=standardize, covariance_type=cov
        ).fit(X)
        assert est.covariances_.shape == ((3,) if cov == "spherical" else (3, 4))
        gm = est.to_sklearn()
        assert gm.covariance_type == cov
        np.testing.assert_allclose(gm.predict_proba(X), est.predict_proba(X), atol=1e-5)
        np.testing.assert_allclose(gm.score_samples(X), est.score_samples(X), rtol=1e-6)
        np.testing.assert_array_equal(gm.predict(X), est.predict(X))
        np.testing.assert_array_equal(est.fit_predict(X), est.predict(X))


@pytest.mark.slow
def test_clone_and_params(ckpts):
    est = TGMMEstimator(3, checkpoint=ckpts["exported"], refine="em", em_steps=2, random_state=5)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "means_")
    twin.set_params(n_components=2)
    assert twin.fit(_blobs(3)).means_.shape == (2, 3)


@pytest.mark.slow
def test_fit_batch_equals_one_fit_per_dataset(ckpts):
    X_BxNxD = np.stack([_blobs(s, n=32, d=3, k=2 + s % 2) for s in range(3)])
    mask = np.ones(X_BxNxD.shape[:2], bool)
    mask[1, 20:] = False
    X_BxNxD[1, 20:] = np.nan  # padding may hold anything
    for kw in (
        dict(n_components=3),
        dict(n_components="auto"),
        dict(n_components="bic"),
        dict(n_components=2, refine="em", n_restarts=2),
    ):
        est = TGMMEstimator(checkpoint=ckpts["exported"], random_state=0, **kw)
        batch = est.fit_batch(X_BxNxD, mask)
        for b in range(3):
            one = clone(est).fit(X_BxNxD[b][mask[b]])
            k = int(batch.component_mask[b].sum())
            assert k == one.n_components_
            # float32 rounding differs with the batch's shape; the variance estimates and the second pass
            # carry it a little further than the means alone did
            np.testing.assert_allclose(batch.weights[b, :k], one.weights_, atol=1e-4)
            np.testing.assert_allclose(batch.means[b, :k], one.means_, atol=1e-3)


@pytest.mark.slow
def test_estimator_errors_equal_the_scoring_path(ckpts):
    """fit_batch on evaluate_methods' own tasks gives the errors evaluate_methods reports (the network's
    estimate, standardize=False: the tasks are at the training scale; the estimator's EM steps estimate
    variances, scoring's keep them at 1, so only the network's estimate is compared)."""
    ckpt = load_checkpoint(ckpts["exported"])
    spec, n, seed = TaskSpec(dim=2, ks=KS, n_max=32), 24, 11
    for steps in (0,):
        method = scoring.model_method(ckpt.model, steps)
        results = scoring.evaluate_methods(
            {"tgmm": method}, spec, params={"tgmm": ckpt.params}, tasks_per_cell=3, ns=(n,), seed=seed
        )
        task_key = jax.random.fold_in(jax.random.key(seed), n)
        task = sample_tasks(task_key, TaskSpec(dim=2, ks=KS, n_max=n, n_min=n, variable_n=False), 3)
        refine = "em" if steps else "none"
        est = TGMMEstimator(checkpoint=ckpts["exported"], refine=refine, em_steps=steps, standardize=False)
        fitted = est.fit_batch(np.asarray(task.points), n_components=np.asarray(task.num_components))
        fitted = fitted.replace(scales=None)  # the isotropic model's errors: means and weights
        ours = evaluate_estimates(jax.tree.map(lambda a: np.asarray(a, np.float32), fitted), task)
        direct = scoring.score_method(method, ckpt.params, jax.random.key(0), task)[0]
        np.testing.assert_allclose(np.asarray(ours["l2"]), direct["l2"], rtol=1e-4, atol=1e-6)
        for k, entry in scoring.summarize(
            {kk: np.asarray(v) for kk, v in ours.items()}, task.num_components
        ).items():
            cell = next(c for c in results["cells"] if c["K"] == k)
            np.testing.assert_allclose(entry["l2"]["mean"], cell["l2"]["mean"], rtol=1e-4)
            np.testing.assert_allclose(entry["cluster_acc"]["mean"], cell["cluster_acc"]["mean"])


@pytest.mark.slow
def test_bic_keeps_the_lowest_bic_of_the_single_k_fits(ckpts):
    X = _blobs(4, n=60, d=2, k=3, sep=8.0)
    auto = TGMMEstimator("bic", checkpoint=ckpts["exported"]).fit(X)
    for k in KS:
        single = TGMMEstimator(k, checkpoint=ckpts["exported"]).fit(X)
        np.testing.assert_allclose(auto.bic_by_k_[k], single.bic(X), rtol=1e-4)
    assert auto.n_components_ == min(auto.bic_by_k_, key=auto.bic_by_k_.get)


@pytest.mark.slow
def test_restarts_never_lower_the_likelihood_and_are_seeded(ckpts):
    X = _blobs(5, n=48, d=3, k=3, sep=5.0)
    kw = dict(checkpoint=ckpts["exported"], refine="em", em_steps=3)
    plain = TGMMEstimator(3, **kw).fit(X)
    a = TGMMEstimator(3, n_restarts=4, random_state=1, **kw).fit(X)
    b = TGMMEstimator(3, n_restarts=4, random_state=1, **kw).fit(X)
    assert a.score(X) >= plain.score(X) - 1e-5 and a.n_iter_ == 3
    np.testing.assert_array_equal(a.means_, b.means_)


@pytest.mark.slow
def test_dtypes_and_jax_arrays_give_the_same_fit(ckpts):
    X = _blobs(6)
    ref = TGMMEstimator(2, checkpoint=ckpts["exported"]).fit(X)
    for variant in (X.astype(np.float32), jax.numpy.asarray(X, jax.numpy.float32)):
        other = TGMMEstimator(2, checkpoint=ckpts["exported"]).fit(variant)
        np.testing.assert_allclose(other.means_, ref.means_, atol=1e-4)


@pytest.mark.slow
def test_standardize_makes_the_fit_scale_equivariant(ckpts):
    X = _blobs(7, n=40, d=3)
    kw = dict(checkpoint=ckpts["exported"], standardize=True)
    a, b = TGMMEstimator(2, **kw).fit(X), TGMMEstimator(2, **kw).fit(1000.0 * X + 5.0)
    np.testing.assert_allclose(b.means_, 1000.0 * a.means_ + 5.0, rtol=1e-4)
    np.testing.assert_allclose(b.covariances_, 1e6 * a.covariances_, rtol=1e-4)
    np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-5)


@pytest.mark.slow
def test_sample_bic_aic(ckpts):
    est = TGMMEstimator(2, checkpoint=ckpts["exported"], random_state=0).fit(_blobs(8))
    X, y = est.sample(4000)
    assert X.shape == (4000, 3) and set(np.unique(y)) <= {0, 1}
    np.testing.assert_allclose(np.bincount(y) / 4000, est.weights_, atol=0.03)
    for k in range(2):
        np.testing.assert_allclose(X[y == k].mean(axis=0), est.means_[k], atol=0.15)
    p, n, ll = 2 * 3 + 1 + 2, X.shape[0], est.score(X) * X.shape[0]  # weights, means, spherical variances
    np.testing.assert_allclose(est.bic(X), -2 * ll + p * np.log(n))
    np.testing.assert_allclose(est.aic(X), -2 * ll + 2 * p)


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), {}, "NaN or infinity"),
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), {}, "NaN or infinity"),
        (lambda X: X[:, 0], {}, "1-D"),
        (lambda X: X[:2], dict(n_components=3), "2 samples but n_components=3"),
        (lambda X: X, dict(n_components=7), "n_components=7 is not in the trained set"),
        (lambda X: X, dict(n_components=6), "not in the trained set"),
        (
            lambda X: X,
            dict(n_components=8),
            "shipped checkpoint(s) trained on K = 8: checkpoint='cluster_k8'",
        ),
        (lambda X: X, dict(refine="newton"), "refine must be one of"),
        (lambda X: X, dict(n_restarts=2), "n_restarts > 0 needs refine='em'"),
        (lambda X: X, dict(em_steps=-1, refine="em"), "em_steps must be an integer >= 0"),
        (lambda X: X.astype(str), {}, "real numbers"),
        (lambda X: X[None], {}, "2-D"),
        (lambda X: X, dict(checkpoint="no_such_checkpoint"), "neither a directory nor a shipped"),
    ],
)
@pytest.mark.slow
def test_bad_inputs_are_rejected_with_a_message_naming_the_problem(ckpts, make, kwargs, message):
    est = TGMMEstimator(**{"n_components": 2, "checkpoint": ckpts["exported"], **kwargs})
    with pytest.raises(ValueError, match=re.escape(message)):
        est.fit(make(_blobs(9)))


@pytest.mark.slow
def test_wrong_dimension_for_a_fixed_d_checkpoint(ckpts):
    with pytest.raises(ValueError, match=r"X has 3 features but checkpoint .* was trained for d=2 only"):
        TGMMEstimator(2, checkpoint=ckpts["fixed"]).fit(_blobs(10, d=3))
    fitted = TGMMEstimator(2, checkpoint=ckpts["exported"]).fit(_blobs(10, d=3))
    with pytest.raises(ValueError, match="X has 5 features, but TGMMEstimator is expecting 3 features"):
        fitted.predict(np.zeros((4, 5)))


@pytest.mark.slow
def test_fit_batch_input_errors(ckpts):
    est = TGMMEstimator(2, checkpoint=ckpts["exported"])
    with pytest.raises(ValueError, match=r"\[B, N, d\]"):
        est.fit_batch(np.zeros((8, 2)))
    with pytest.raises(ValueError, match=r"mask must be \[B, N\]"):
        est.fit_batch(np.zeros((2, 8, 2)), np.ones((2, 7), bool))
    mask = np.ones((2, 8), bool)
    mask[1, 1:] = False
    with pytest.raises(ValueError, match="dataset 1 has 1 samples but n_components=2"):
        est.fit_batch(np.random.default_rng(0).normal(size=(2, 8, 2)), mask)
    with pytest.raises(ValueError, match="n_components=4 is not in the trained set"):
        est.fit_batch(np.zeros((2, 8, 2)), n_components=np.array([2, 4]))


@pytest.mark.slow
def test_nothing_touches_the_network(ckpts, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    ckpt = pretrained.load_exported(ckpts["exported"])
    assert TGMMEstimator(2, checkpoint=ckpt).fit(_blobs(11)).means_.shape == (2, 3)
    with pytest.raises(ValueError, match="no pretrained checkpoint named 'nope'"):
        pretrained.load_pretrained("nope")


@pytest.mark.slow
def test_fit_command_prints_the_parameters(ckpts, tmp_path):
    X = _blobs(12, n=30, d=2)
    np.savetxt(tmp_path / "points.csv", X, delimiter=",", header="x,y", comments="")
    np.save(tmp_path / "points.npy", X)
    a = fit.fit_file(str(tmp_path / "points.csv"), "2", checkpoint=ckpts["exported"], refine="em")
    b = fit.fit_file(str(tmp_path / "points.npy"), "bic", checkpoint=ckpts["exported"])
    json.dumps(a)
    assert a["n_samples"] == 30 and np.asarray(a["means"]).shape == (2, 2) and sum(a["labels_count"]) == 30
    # "bic" scores K = 1 (closed form) beside every trained K
    assert b["n_components"] in (1, *KS) and set(b["bic_by_k"]) == {"1", "2", "3"}
    assert "K=2" in fit.summary(a)
    with pytest.raises(ValueError, match=r"\.npy or \.csv"):
        fit.load_points("points.txt")


def _readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("### Library use: the estimator", 1)
    assert len(section) == 2, "README has no 'Library use: the estimator' section"
    return re.search(r"```python\n(.*?)```", section[1], re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_example_runs_as_written():
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 5
    if pretrained.DEFAULT not in pretrained.available():
        pytest.skip(f"the shipped checkpoint tgmm_jax/pretrained/{pretrained.DEFAULT} is not exported yet")
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the README's own example, as written


@pytest.mark.slow
def test_shipped_checkpoints_load_offline_and_fit_in_the_size_budget():
    names = pretrained.available()
    if not names:
        pytest.skip("no checkpoint is shipped in tgmm_jax/pretrained yet")
    here = os.path.dirname(os.path.abspath(pretrained.__file__))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(here) for f in fs)
    assert size <= 10e6, f"tgmm_jax/pretrained holds {size / 1e6:.1f} MB (budget 10 MB)"
    for name in names:
        ckpt = pretrained.load_pretrained(name)
        assert os.path.isfile(os.path.join(here, name, pretrained.CARD_FILE)), f"{name} has no model card"
        assert ckpt.spec.ks and ckpt.model_config is not None
    if pretrained.DEFAULT in names:
        assert pretrained.load_pretrained(pretrained.DEFAULT).model_config.dimension_free
