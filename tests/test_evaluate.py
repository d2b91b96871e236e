"""Scoring (tgmm_jax.scoring) and experiments.evaluate / study on a tiny workdir: every field present,
every method sees identical tasks, and each method compiles once across evaluation rounds."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from baselines import get_baseline
from experiments import methods as methods_lib
from experiments import reporting
from tests import train_config
from tgmm_jax import scoring
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import train_and_evaluate
from tgmm_jax.train.restore import load_run
from tgmm_jax.train.trainer import PeriodicEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("l2", "l2_means", "l2_weights", "cluster_acc", "loglik", "oracle_gap", "l2_official")


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny"))
    config = train_config.get_config()
    config.total_steps = 4
    config.eval_every = 2
    config.eval.baselines = ("em",)
    methods_lib.train(config, workdir)  # as experiments/train.py: the baselines from the registry
    return workdir


@pytest.mark.subprocess
@pytest.mark.slow
def test_evaluate_cli_writes_every_field(tiny_workdir, tmp_path):
    output = str(tmp_path / "results.json")
    cmd = [
        sys.executable,
        "-m",
        "experiments.evaluate",
        f"--workdir={tiny_workdir}",
        "--tasks_per_cell=6",
        "--n=8,16",
        "--methods=tgmm,em,spectral",
        f"--output={output}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(output) as f:
        results = json.load(f)
    assert results["step"] == 4 and results["tasks_per_cell"] == 6 and results["ns"] == [8, 16]
    assert "final checkpoint" in results["protocol"]
    cells = results["cells"]
    # the paper-style tiny model has no skeleton: its learned gain is measured against em_kmeanspp, run with it
    assert results["references"] == {"tgmm": "em_kmeanspp"}
    assert {(c["method"], c["K"], c["N"]) for c in cells} == {
        (m, k, n) for m in ("tgmm", "em", "spectral", "em_kmeanspp") for k in (2, 3) for n in (8, 16)
    }
    by_key = {(c["method"], c["K"], c["N"]): c for c in cells}
    for k in (2, 3):
        for n in (8, 16):
            gain = by_key[("tgmm", k, n)]["learned_gain"]
            assert gain["reference"] == "em_kmeanspp" and gain["num_tasks"] == 6
            # every task applies to both: the mean paired difference is the difference of the means
            want = by_key[("em_kmeanspp", k, n)]["l2"]["mean"] - by_key[("tgmm", k, n)]["l2"]["mean"]
            np.testing.assert_allclose(gain["mean"], want, rtol=1e-9, atol=1e-12)
    assert "learned gain" in out.stdout and "| tgmm vs em_kmeanspp |" in out.stdout
    for cell in cells:
        assert cell["num_tasks"] == 6 and 0.0 <= cell["not_applicable"] <= 1.0 and cell["seconds"] > 0
        for metric in METRICS:
            assert set(cell[metric]) == {"mean", "sem", "median"}
        if cell["method"] != "spectral":  # spectral does not apply for K > d = 2
            assert cell["not_applicable"] == 0.0 and np.isfinite(cell["l2"]["mean"])
    spectral_k3 = [c for c in cells if c["method"] == "spectral" and c["K"] == 3]
    assert all(c["not_applicable"] == 1.0 for c in spectral_k3)
    assert os.path.exists(output.removesuffix(".json") + ".md")
    assert "l2 error" in out.stdout and "| tgmm |" in out.stdout and "(median " in out.stdout


def test_paired_gain_is_the_paired_t_statistic():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(0)
    ks_B = np.repeat([2, 3], 20)
    model = {"l2": rng.random(40), "applicable": np.ones(40, bool)}
    reference = {"l2": model["l2"] + 0.1 + 0.3 * rng.standard_normal(40), "applicable": np.ones(40, bool)}
    reference["applicable"][3] = False  # a task where the reference did not apply is left out of the pair
    gains = scoring.paired_gain(model, reference, ks_B)
    for k in (2, 3):
        keep = (ks_B == k) & reference["applicable"]
        test = ttest_rel(reference["l2"][keep], model["l2"][keep])
        assert gains[k]["num_tasks"] == keep.sum()
        np.testing.assert_allclose(gains[k]["z"], test.statistic, rtol=1e-10)
        np.testing.assert_allclose(gains[k]["mean"], np.mean(reference["l2"][keep] - model["l2"][keep]))


@pytest.mark.slow
def test_all_methods_see_identical_tasks():
    seen = {}

    def spy(name):
        def fn(params, key, task):
            # methods run under jit: record the concrete tasks on the host
            jax.debug.callback(lambda t: seen.setdefault(name, []).append(jax.tree.map(np.asarray, t)), task)
            k = task.means.shape[1]
            weights = jax.numpy.where(task.component_mask, 1.0 / task.num_components[:, None], 0.0)
            from tgmm_jax.gmm import MixtureParams

            return MixtureParams(weights, task.means * 0 + k, None, task.component_mask), {}

        return fn

    spec = TaskSpec(dim=2, ks=(2, 3), n_max=8)
    results = scoring.evaluate_methods(
        {"a": spy("a"), "b": spy("b"), "c": spy("c")}, spec, tasks_per_cell=5, ns=(8, 12), seed=3, chunk=None
    )
    assert len(seen["a"]) == len(seen["b"]) == len(seen["c"]) == 2  # one call per N
    for call in range(2):
        for leaf_a, leaf_b, leaf_c in zip(*(jax.tree.leaves(seen[m][call]) for m in "abc")):
            np.testing.assert_array_equal(leaf_a, leaf_b)
            np.testing.assert_array_equal(leaf_a, leaf_c)
    assert set(results["task_fingerprints"]) == {"8", "12"}
    # the tasks depend on the seed only: another method set draws the same tasks
    again = scoring.evaluate_methods({"z": spy("z")}, spec, tasks_per_cell=5, ns=(8, 12), seed=3, chunk=None)
    assert again["task_fingerprints"] == results["task_fingerprints"]


@pytest.mark.slow
def test_chunked_fit_equals_one_call(tiny_workdir):
    run = load_run(tiny_workdir)
    spec = TaskSpec(dim=2, ks=(2, 3), n_max=8, variable_n=False)
    task = sample_tasks(jax.random.key(0), spec, 5)
    fn = scoring.model_method(run.model)
    whole = scoring.fit_in_chunks(fn, run.params, jax.random.key(1), task, None)
    chunked = scoring.fit_in_chunks(fn, run.params, jax.random.key(1), task, 4)
    np.testing.assert_allclose(np.asarray(chunked.means), np.asarray(whole.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(chunked.weights), np.asarray(whole.weights), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_tail_protocol_reads_the_logs(tiny_workdir):
    results = reporting.training_tail_protocol(tiny_workdir)
    assert "training tail" in results["protocol"] and results["ns"] == [8]
    methods = {c["method"] for c in results["cells"]}
    assert methods == {"tgmm", "em", "em_kmeanspp"}  # em_kmeanspp: the reference of the learned gain
    for cell in results["cells"]:
        assert cell["rounds"] == 2 and np.isfinite(cell["l2"]["mean"])
        assert ("learned_gain" in cell) == (cell["method"] == "tgmm")
    report = reporting.markdown_report(results)
    assert "| tgmm |" in report and "| tgmm vs reference |" in report


@pytest.mark.slow
def test_study_does_not_evaluate_a_preempted_run(tmp_path, monkeypatch):
    """A study whose training returns early (SIGTERM saved a checkpoint) stops instead of evaluating it."""
    from experiments import study

    config = train_config.get_config()
    config.total_steps = 6
    config.eval_every = 0

    def preempted_at_step_5(cfg, workdir):  # what the trainer leaves after SIGTERM at step 5
        early = cfg.copy_and_resolve_references()
        early.total_steps = 5
        train_and_evaluate(early, workdir)

    train = methods_lib.train
    monkeypatch.setattr(methods_lib, "train", preempted_at_step_5)
    with pytest.raises(SystemExit, match="stopped at step 5 of 6"):
        study.train_model(config, str(tmp_path))
    monkeypatch.setattr(methods_lib, "train", train)
    study.train_model(config, str(tmp_path))  # rerunning resumes to the end
    assert load_run(str(tmp_path)).step == 6


@pytest.mark.slow
def test_study_cache_adds_missing_n_only_and_equals_a_full_evaluation(tiny_workdir, tmp_path):
    from experiments import study

    kw = {"tasks_per_cell": 4, "seed": 7, "methods": ["tgmm", "em"]}
    out = str(tmp_path / "cached.json")
    study.evaluate_cached(tiny_workdir, out, ns=(8,), **kw)
    merged = study.evaluate_cached(tiny_workdir, out, ns=(8, 6), **kw)
    full = study.evaluate_cached(tiny_workdir, str(tmp_path / "full.json"), ns=(6, 8), **kw)
    assert merged["ns"] == [6, 8] and merged["task_fingerprints"] == full["task_fingerprints"]

    def key(c):
        return c["method"], c["K"], c["N"]

    strip = lambda cells: sorted(
        ({k: v for k, v in c.items() if not k.startswith("seconds")} for c in cells), key=key
    )
    assert strip(merged["cells"]) == strip(full["cells"])
    assert (
        study.evaluate_cached(tiny_workdir, out, ns=(6,), **kw) == merged
    )  # a subset: served from the cache

    # A cache from another checkpoint step: the baselines' cells are kept (marked here), TGMM is evaluated again.
    with open(out) as f:
        stale = json.load(f)
    stale["step"] = -1
    for c in stale["cells"]:
        c["l2"]["mean"] = -1.0
    with open(out, "w") as f:
        json.dump(stale, f)
    again = study.evaluate_cached(tiny_workdir, out, ns=(6, 8), **kw)
    assert again["step"] == full["step"]
    # em_kmeanspp, tgmm's reference, runs again with it (the learned gain pairs them on the same tasks)
    fresh = ("tgmm", "em_kmeanspp")
    assert all((c["l2"]["mean"] == -1.0) == (c["method"] not in fresh) for c in again["cells"])
    assert len(again["cells"]) == len({key(c) for c in again["cells"]})
    tgmm_only = lambda r: [c for c in strip(r["cells"]) if c["method"] == "tgmm"]
    assert tgmm_only(again) == tgmm_only(full)


@pytest.mark.slow
def test_periodic_evaluation_compiles_each_method_once(tiny_workdir, monkeypatch):
    """Three rounds of the trainer's evaluator, new params and new tasks each round: one trace per method."""
    run = load_run(tiny_workdir)
    monkeypatch.setattr(scoring, "_FITS", {})  # methods compiled by earlier tests do not count
    monkeypatch.setattr(scoring, "_apply_model", chex.assert_max_traces(scoring._apply_model, n=1))
    em_fit = get_baseline("em", max_iter=5)
    em = chex.assert_max_traces(lambda key, task: em_fit(key, task), n=1)
    eval_config = config_lib.default_config().eval
    eval_config.tasks_per_k, eval_config.baselines = 4, ("em",)
    evaluator = PeriodicEvaluator(
        run.model, run.spec, eval_config, jax.random.key(0), {"em": scoring.param_free(em)}
    )
    for step in range(3):
        params = jax.tree.map(lambda a, s=step: a * (1.0 + 0.1 * s), run.params)
        summaries = evaluator(params, step)
        assert set(summaries) == {"tgmm", "em"}
    # a rebuilt but equal method (as each study call builds) reuses the compiled fit
    task = sample_tasks(jax.random.key(1), evaluator.spec, 4)
    scoring.score_method(scoring.model_method(run.model), run.params, jax.random.key(2), task)
