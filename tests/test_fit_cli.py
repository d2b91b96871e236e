"""experiments.fit as users run it: CSV reading (headers, pandas index, line numbers), strict JSON,
one-line errors, --output / --labels_output; checkpoint errors naming the file and $TGMM_CHECKPOINT_DIR;
the estimator's input fixes (sparse, pandas, fit_batch's bool component_mask).

Fits use the shipped checkpoint ``cluster`` on one shape (40 points, d=2, K=2), so the program compiles once;
two tests run the command as a subprocess, the rest call ``fit.run`` in-process.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import fit
from tests.estimator_helpers import save_tiny_checkpoint
from tgmm_jax import export_cache, pretrained
from tgmm_jax.estimator import TGMMEstimator, TGMMEstimatorCore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = "cluster"


def _points(n=40, d=2):
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(-3, 1, (n // 2, d)), rng.normal(3, 1, (n - n // 2, d))])


def _strict_json(text: str):
    def refuse(token):
        raise AssertionError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _csv(tmp_path, X, header="x,y") -> str:
    np.savetxt(tmp_path / "points.csv", X, delimiter=",", header=header, comments="")
    return str(tmp_path / "points.csv")


def _run(capsys, data, n_components="2", **kw):
    rc = fit.run(data, n_components, **{"checkpoint": CKPT, "random_state": 0, **kw})
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_failed(rc, out, err, *fragments):
    assert rc != 0
    assert out == "", "nothing on stdout after a failure"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# The CSV reader: header detection, pandas index column, 1-based line numbers.


def test_all_text_first_row_is_a_header_and_a_numeric_one_is_data(tmp_path):
    X = fit.load_points(_write(tmp_path / "h.csv", "x,y\n1,2\n3,4\n"))
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    X = fit.load_points(_write(tmp_path / "n.csv", "1,2\n3,4\n"))  # no header: the first row is kept
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    X = fit.load_points(_write(tmp_path / "c.csv", "# comment\n\n x , y \n1e0, -2\n\n"))
    np.testing.assert_array_equal(X, [[1, -2]])


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("1.0,abc\n2,3\n4,5\n", ["line 1, column 2", "'abc'"]),  # mixed first row: an error, not a header
        ("x,y\n1,2\n3,oops\n", ["line 3, column 2", "'oops'"]),
        ("x,y\n1,2\n3,\n5,6\n", ["line 3, column 2", "missing value"]),
        ("x,y\n1,2\nnan,4\n", ["line 3, column 1", "non-finite"]),
        ("# written by hand\n\nx,y\n1,2\n3,4\n5,inf\n", ["line 6, column 2"]),
        ("x,y\n1,2\n3,4,5\n", ["line 3", "3 fields, expected 2"]),
        ("", ["no data rows"]),
        ("x,y\n", ["a header on line 1 but no data rows"]),
    ],
)
def test_bad_csv_rows_name_their_line(tmp_path, capsys, text, fragments):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError) as info:
        fit.load_points(path)
    for fragment in fragments:
        assert fragment in str(info.value)
    _assert_failed(*_run(capsys, path), path, *fragments)


def test_pandas_index_column_is_refused_or_dropped(tmp_path, capsys):
    path = _write(tmp_path / "idx.csv", ',a,b\n0,1.5,2\n1,3,4\n2,"5",6\n')  # DataFrame.to_csv's default
    line = _assert_failed(*_run(capsys, path), "line 1", "index=False", "--drop_index")
    assert "pandas" in line
    np.testing.assert_array_equal(fit.load_points(path, drop_index=True), [[1.5, 2], [3, 4], [5, 6]])
    bad = _write(tmp_path / "idx_bad.csv", ",a,b\n0,1,2\n1,x,4\n")
    _assert_failed(*_run(capsys, bad, drop_index=True), "line 3, column 2")  # columns of the file


# ----------------------------------------------------------------------------------------------------
# Failures: one line on stderr, a non-zero exit code, nothing on stdout, no file written.


def test_unreadable_inputs_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "one_d.npy", np.arange(5.0))
    cases = {
        str(tmp_path / "missing.csv"): "no such file",
        str(tmp_path / "dir.csv"): "is a directory",
        str(tmp_path / "empty.npy"): "not a readable .npy",
        str(tmp_path / "corrupt.npy"): "not a readable .npy",
        str(tmp_path / "one_d.npy"): "2-D",
        str(tmp_path / "points.txt"): ".npy or .csv",
    }
    for path, fragment in cases.items():
        _assert_failed(*_run(capsys, path, output=str(tmp_path / "out.json")), fragment)
    assert not os.path.exists(tmp_path / "out.json")
    data = _csv(tmp_path, _points())
    _assert_failed(*_run(capsys, data, "two"), "--n_components must be an integer, 'auto' or 'bic'")
    _assert_failed(*_run(capsys, data, output=str(tmp_path / "no" / "out.json")), "does not exist")


def test_checkpoint_failures_fail_with_one_line(tmp_path, capsys):
    data = _csv(tmp_path, _points())
    workdir = tmp_path / "workdir"
    (workdir / "checkpoints").mkdir(parents=True)  # a training workdir that never saved
    _assert_failed(*_run(capsys, data, checkpoint=str(workdir)), str(workdir), "no finished checkpoint")
    _assert_failed(*_run(capsys, data, checkpoint=str(tmp_path / "nowhere")), "neither a directory")


def test_memory_errors_are_reported_not_raised(tmp_path, capsys, monkeypatch):
    data = _csv(tmp_path, _points())

    def oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(fit, "fit_points", oom)
    _assert_failed(*_run(capsys, data), "out of memory")

    def device_oom(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0TiB.\n  details")

    monkeypatch.setattr(fit, "fit_points", device_oom)
    _assert_failed(*_run(capsys, data), "out of memory", "RESOURCE_EXHAUSTED")


def test_non_finite_results_are_an_error_not_nan_tokens(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", _points() * 1e200)  # finite in float64; its variances (1e400) are not
    out_file = tmp_path / "out.json"
    with np.errstate(over="ignore"):
        result = _run(capsys, str(tmp_path / "huge.npy"), output=str(out_file))
    _assert_failed(*result, "spread", "rescale it first")
    assert not out_file.exists()
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or infinity\) in bic_by_k\.3, means"):
        fit.to_json({"bic_by_k": {"2": 1.0, "3": float("nan")}, "means": [[0.0, float("inf")]]})


# ----------------------------------------------------------------------------------------------------
# Success: strict JSON, --output, --labels_output.


@pytest.mark.slow
def test_output_and_labels_files(tmp_path, capsys):
    data = _csv(tmp_path, _points())
    rc, out, err = _run(capsys, data)
    assert rc == 0 and "K=2" in err
    printed = _strict_json(out)
    assert printed["n_samples"] == 40 and np.asarray(printed["means"]).shape == (2, 2)

    rc, out, _ = _run(
        capsys, data, output=str(tmp_path / "fit.json"), labels_output=str(tmp_path / "labels.txt")
    )
    assert rc == 0 and out == ""
    written = _strict_json((tmp_path / "fit.json").read_text())
    assert written == printed
    labels = [int(x) for x in (tmp_path / "labels.txt").read_text().splitlines()]
    assert len(labels) == 40 and np.bincount(labels, minlength=2).tolist() == written["labels_count"]
    assert _run(capsys, data, labels_output=str(tmp_path / "labels.npy"))[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")], "temporary files left behind"


@pytest.mark.slow
def test_dropped_index_and_unscorable_k_give_strict_json(tmp_path, capsys, monkeypatch):
    X = _points()
    rows = "".join(f"{i},{x},{y}\n" for i, (x, y) in enumerate(X))
    path = _write(tmp_path / "idx.csv", ",a,b\n" + rows)  # what DataFrame.to_csv writes by default

    class NoK5(TGMMEstimatorCore):  # as if K=5 could not be scored (fewer points than components): BIC inf
        def fit(self, X, y=None):
            super().fit(X, y)
            self.bic_by_k_ = {**self.bic_by_k_, 5: float("inf")}
            return self

    monkeypatch.setattr(fit, "TGMMEstimatorCore", NoK5)
    rc, out, _ = _run(capsys, path, drop_index=True)
    result = _strict_json(out)
    assert rc == 0 and result["n_samples"] == 40 and result["n_features"] == 2
    assert result["bic_by_k"] == {"2": pytest.approx(result["bic"], rel=1e-5), "5": None}


# ----------------------------------------------------------------------------------------------------
# The command as a subprocess: exit codes, stderr, no libtpu log line.


def _command(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "experiments.fit", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.subprocess
@pytest.mark.slow
def test_command_prints_strict_json_and_no_log_lines(tmp_path):
    proc = _command(f"--data={_csv(tmp_path, _points())}", "--n_components=2", f"--checkpoint={CKPT}")
    assert proc.returncode == 0, proc.stderr
    assert _strict_json(proc.stdout)["n_components"] == 2
    assert "Unable to initialize backend" not in proc.stderr and "xla_bridge" not in proc.stderr
    assert proc.stderr.splitlines()[0].startswith("40 points in d=2: K=2")


@pytest.mark.subprocess
@pytest.mark.slow
def test_command_failures_are_one_line():
    proc = _command("--n_components=2")  # no --data: absl's flag error, as one line
    _assert_failed(proc.returncode, proc.stdout, proc.stderr, "--data")
    assert proc.returncode == 2


# ----------------------------------------------------------------------------------------------------
# Checkpoint errors name the file and the source.


@pytest.fixture
def broken_checkpoints(tmp_path):
    src = pretrained.pretrained_path(CKPT)
    truncated, bad_config = tmp_path / "truncated", tmp_path / "bad_config"
    shutil.copytree(src, truncated)
    shutil.copytree(src, bad_config)
    params = truncated / pretrained.PARAMS_FILE
    params.write_bytes(params.read_bytes()[:1000])
    (bad_config / pretrained.CONFIG_FILE).write_text('{"format": 1,')
    return {"truncated": str(truncated), "bad_config": str(bad_config)}


def test_checkpoint_errors_name_the_file(broken_checkpoints, tmp_path, capsys):
    params = os.path.join(broken_checkpoints["truncated"], pretrained.PARAMS_FILE)
    config = os.path.join(broken_checkpoints["bad_config"], pretrained.CONFIG_FILE)
    with pytest.raises(pretrained.CheckpointLoadError, match="truncated") as info:
        pretrained.load_checkpoint(broken_checkpoints["truncated"])
    assert params in str(info.value)
    with pytest.raises(ValueError, match="cannot read the checkpoint config") as info:
        pretrained.load_checkpoint(broken_checkpoints["bad_config"])
    assert config in str(info.value)
    data = _csv(tmp_path, _points())
    _assert_failed(*_run(capsys, data, checkpoint=broken_checkpoints["truncated"]), params)


def test_env_checkpoint_errors_name_the_variable(broken_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_CHECKPOINT, broken_checkpoints["bad_config"])
    with pytest.raises(ValueError, match=r"\$TGMM_CHECKPOINT_DIR") as info:
        pretrained.load_checkpoint("pretrained")
    assert pretrained.CONFIG_FILE in str(info.value)
    monkeypatch.setenv(pretrained.ENV_CHECKPOINT, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"\$TGMM_CHECKPOINT_DIR='.*nowhere'"):
        TGMMEstimator(2).fit(_points())


# ----------------------------------------------------------------------------------------------------
# Estimator: bool component_mask, sparse and pandas input.


def test_fit_batch_component_mask_is_bool_and_indexes():
    X = _points()
    est = TGMMEstimator(2, checkpoint=CKPT, random_state=0)
    fitted = est.fit_batch(X[None])
    assert fitted.component_mask.dtype == bool
    assert fitted.means[0][fitted.component_mask[0]].shape == (2, 2)
    np.testing.assert_allclose(fitted.means[0][fitted.component_mask[0]], est.fit(X).means_)


def test_sparse_input_is_refused_with_advice():
    sparse = pytest.importorskip("scipy.sparse")
    for make in (sparse.csr_matrix, sparse.csr_array):
        with pytest.raises(ValueError, match="sparse input is not supported; densify it first"):
            TGMMEstimator(2, checkpoint=CKPT).fit(make(_points()))


def test_pandas_dataframes_are_arrays():
    pd = pytest.importorskip("pandas")
    X = _points()
    df = pd.DataFrame({"x": X[:, 0], "y": X[:, 1]})
    a = TGMMEstimator(2, checkpoint=CKPT, random_state=0).fit(df)
    b = TGMMEstimator(2, checkpoint=CKPT, random_state=0).fit(X)
    np.testing.assert_allclose(a.means_, b.means_)
    np.testing.assert_allclose(a.predict(df), b.predict(X))
    missing = df.astype({"x": "Float64"})  # a nullable column: pd.NA becomes NaN, then refused
    missing.loc[3, "x"] = pd.NA
    with pytest.raises(ValueError, match=r"NaN or infinity .*row 3, column 0"):
        a.predict(missing)


# ----------------------------------------------------------------------------------------------------
# The command's cache of traced programs (tgmm_jax.export_cache): same output, corrupt entries ignored.


@pytest.fixture
def tiny_fit(tmp_path, capsys):
    """(fit(n): the command's JSON on n points with a tiny checkpoint, the export cache's directory); the
    cache is off again afterwards."""
    tiny = save_tiny_checkpoint(str(tmp_path / "tiny"))

    def run_fit(n=40):
        data = str(tmp_path / f"points{n}.npy")
        np.save(data, _points(n))
        rc = fit.run(data, "2", checkpoint=tiny, random_state=0)
        out, err = capsys.readouterr()
        assert rc == 0, err
        return out

    yield run_fit, str(tmp_path / "export")
    export_cache.disable()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _entries(directory: str, suffix: str = ".jaxexport") -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(suffix))


@pytest.mark.slow
def test_export_cache_output_is_identical_and_corrupt_entries_fall_back(tiny_fit):
    run_fit, directory = tiny_fit
    plain = run_fit()  # the cache off: _fit_tasks itself
    assert export_cache.enable(directory)
    stats = dict(export_cache.STATS)
    cold = run_fit()  # a miss: traced once, written, then called
    (entry,) = _entries(directory)
    assert export_cache.STATS["misses"] == stats["misses"] + 1
    good = _read(entry)
    export_cache._RUNNERS.clear()  # as a new process: the program is read back
    warm = run_fit()
    assert export_cache.STATS["hits"] == stats["hits"] + 1
    assert plain == cold == warm, "the cache must not change a single digit"

    # another shape's entry (a stale or foreign one), a truncated one, an empty one, garbage: each is
    # ignored, the program traced again, the entry rewritten, and the output unchanged
    run_fit(70)  # another N bucket: another entry
    other = next(e for e in _entries(directory) if e != entry)
    for bad in (_read(other), good[: len(good) // 2], b"", b"not an export"):
        with open(entry, "wb") as f:
            f.write(bad)
        export_cache._RUNNERS.clear()
        errors = export_cache.STATS["errors"]
        assert run_fit() == plain
        assert export_cache.STATS["errors"] == errors + 1
        assert _read(entry) == good


def test_param_shapes_memo_matches_and_survives_corruption(tmp_path):
    tiny = save_tiny_checkpoint(str(tmp_path / "tiny"))
    directory = str(tmp_path / "export")
    want = pretrained.load_exported(tiny).params  # the cache off: the abstract init
    try:
        assert export_cache.enable(directory)
        for _ in range(2):  # computed and written, then read back
            got = pretrained.load_exported(tiny).params
            assert jax.tree.structure(got) == jax.tree.structure(want)
        (memo,) = _entries(directory, ".json")
        shapes = json.loads(_read(memo))["value"]
        assert shapes == {
            jax.tree_util.keystr(p): list(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(want)
        }
        with open(memo, "w") as f:
            f.write('{"value": ')  # truncated: computed again
        pretrained.load_exported(tiny)
        assert json.loads(_read(memo))["value"] == shapes
    finally:
        export_cache.disable()


@pytest.mark.subprocess
@pytest.mark.slow
def test_command_warm_cache_output_is_identical_and_env_turns_caches_off(tmp_path):
    tiny = save_tiny_checkpoint(str(tmp_path / "tiny"))
    np.save(tmp_path / "points.npy", _points())
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != fit.NO_CACHE_ENV}
    args = [f"--data={tmp_path / 'points.npy'}", "--n_components=2", f"--checkpoint={tiny}"]
    outputs, stamps = [], []
    for extra in ({}, {}, {fit.NO_CACHE_ENV: "1", "XDG_CACHE_HOME": str(tmp_path / "off")}):
        proc = _command(*args, env={**env, "XDG_CACHE_HOME": str(tmp_path / "on"), **extra})
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        exports = tmp_path / "on" / "tgmm_jax" / "export"
        stamps.append({p.name: p.stat().st_mtime_ns for p in exports.iterdir()})
    assert outputs[0] == outputs[1] == outputs[2]
    assert any(name.endswith(".jaxexport") for name in stamps[0])
    assert stamps[0] == stamps[1], "the warm run read every entry back, it rewrote none"
    assert not (tmp_path / "off").exists(), "TGMM_JAX_NO_CACHE=1 turns every cache off"


# ----------------------------------------------------------------------------------------------------
# The command's start: no scikit-learn (TGMMEstimatorCore) and no scipy.optimize/stats on its import path.


@pytest.mark.subprocess
def test_command_imports_neither_sklearn_nor_heavy_scipy():
    code = (
        "import sys, experiments.fit; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn' or m.startswith("
        "('scipy.stats', 'scipy.optimize', 'scipy.special', 'scipy.sparse'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_core_helpers_match_sklearn_and_scipy():
    from scipy.special import logsumexp
    from sklearn.exceptions import NotFittedError
    from sklearn.utils import check_random_state

    from tgmm_jax import estimator

    a = np.random.default_rng(0).normal(0, 50, (7, 4))
    a[2], a[3, 1] = -np.inf, -np.inf  # a row with no mass, a component with none
    np.testing.assert_allclose(estimator._logsumexp(a), logsumexp(a, axis=1), rtol=1e-14)
    np.testing.assert_allclose(
        estimator._logsumexp(a, keepdims=True), logsumexp(a, axis=1, keepdims=True), rtol=1e-14
    )
    for seed in (3, np.int64(3)):
        assert estimator._check_random_state(seed).randint(99) == check_random_state(seed).randint(99)
    rs = np.random.RandomState(1)
    assert estimator._check_random_state(rs) is rs
    assert estimator._check_random_state(None) is check_random_state(None)
    with pytest.raises(ValueError, match="cannot be used to seed"):
        estimator._check_random_state("x")
    for cls in (estimator.TGMMEstimatorCore, TGMMEstimator):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            cls(2).predict(np.zeros((3, 2)))
    assert issubclass(TGMMEstimator, estimator.TGMMEstimatorCore)
    assert TGMMEstimator.__module__ == "tgmm_jax.estimator" and TGMMEstimator.__doc__


# ----------------------------------------------------------------------------------------------------
# --missing=allow (NaN / empty CSV fields as missing values) and --noise_variance (a known noise variance).


def test_missing_values_are_an_error_unless_allowed(tmp_path):
    text = "x,y\n1,2\n3,\nnan,4\n5,NaN\n"
    path = _write(tmp_path / "m.csv", text)
    with pytest.raises(ValueError, match=r"line 3, column 2: missing value \(empty field\)"):
        fit.load_points(path)  # the default's message, as before (now with the flag to pass)
    with pytest.raises(ValueError, match="--missing=allow"):
        fit.load_points(path)
    X = fit.load_points(path, missing="allow")
    np.testing.assert_array_equal(X, [[1, 2], [3, np.nan], [np.nan, 4], [5, np.nan]])
    empty = _write(tmp_path / "e.csv", "x,y\n1,2\n,\n")
    with pytest.raises(ValueError, match="line 3: every value is missing"):
        fit.load_points(empty, missing="allow")
    inf = _write(tmp_path / "i.csv", "x,y\n1,2\n3,inf\n")
    with pytest.raises(ValueError, match="line 3, column 2: missing or non-finite value 'inf'"):
        fit.load_points(inf, missing="allow")
    no_header = fit.load_points(_write(tmp_path / "n.csv", ",2\n3,4\n"), missing="allow")
    np.testing.assert_array_equal(no_header, [[np.nan, 2], [3, 4]])  # a row with a number is data
    np.save(tmp_path / "m.npy", np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="row 0, column 1.*missing='allow'"):
        fit.load_points(str(tmp_path / "m.npy"))
    assert np.isnan(fit.load_points(str(tmp_path / "m.npy"), missing="allow")[0, 1])
    with pytest.raises(ValueError, match="--missing must be"):
        fit.load_points(path, missing="impute")


@pytest.mark.slow
def test_missing_allow_fits_a_csv_with_empty_fields(tmp_path, capsys):
    X = _points()
    rows = "".join(
        ",".join("" if (i + j) % 5 == 0 and j == i % 2 else repr(float(v)) for j, v in enumerate(x)) + "\n"
        for i, x in enumerate(X)
    )
    path = _write(tmp_path / "holes.csv", "x,y\n" + rows)
    assert np.isnan(fit.load_points(path, missing="allow")).sum() == 8
    _assert_failed(*_run(capsys, path), "line 2, column 1", "missing value")
    rc, out, err = _run(capsys, path, missing="allow", labels_output=str(tmp_path / "labels.txt"))
    assert rc == 0, err
    result = _strict_json(out)
    assert result["n_samples"] == 40 and result["n_components"] == 2
    labels = np.loadtxt(tmp_path / "labels.txt", dtype=int)
    truth = np.repeat([0, 1], 20)
    assert max(np.mean(labels == truth), np.mean(labels != truth)) == 1.0  # two far-apart blobs


def test_noise_variance_flag_values():
    assert fit.valid_noise_variance(None) and fit.valid_noise_variance(2.5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        assert not fit.valid_noise_variance(bad)


@pytest.mark.slow
def test_noise_variance_gives_the_known_covariances(tmp_path, capsys):
    data = _csv(tmp_path, _points())
    rc, out, err = _run(capsys, data, noise_variance=2.5)
    assert rc == 0, err
    result = _strict_json(out)
    assert result["covariances"] == [2.5, 2.5]
    # BIC counts no variance parameters: K - 1 + K d = 5 for K = 2, d = 2
    loglik = result["mean_log_likelihood"] * 40
    assert result["bic"] == pytest.approx(-2 * loglik + 5 * np.log(40), rel=1e-4)


@pytest.mark.subprocess
@pytest.mark.slow
def test_command_refuses_bad_noise_variance_and_missing_flags(tmp_path):
    data = _csv(tmp_path, _points())
    for flag, fragment in (
        ("--noise_variance=-1", "--noise_variance must be a finite number > 0"),
        ("--noise_variance=abc", "noise_variance"),
        ("--missing=maybe", "missing"),
    ):
        proc = _command(f"--data={data}", flag)
        _assert_failed(proc.returncode, proc.stdout, proc.stderr, fragment)
        assert proc.returncode == 2, flag
