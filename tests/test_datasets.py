"""experiments.datasets (IDX reader, MNIST tasks, bundled scikit-learn sets), label_metrics, and the
phase-transition and real-data helpers, against brute force and closed forms."""

import gzip
import itertools
import math

import jax
import numpy as np
import pytest

from experiments import datasets, label_metrics
from experiments.studies.phase_transition import run as phase_transition
from experiments.studies.real_data import run as real_data
from tgmm_jax.tasks import sample_phase_transition_tasks


def _mnist_like(rng, n):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_matches_numpy(tmp_path, suffix):
    rng = np.random.default_rng(0)
    for array in (
        rng.integers(0, 256, (5, 3, 4), dtype=np.uint8),
        rng.standard_normal((2, 7)).astype(np.float32),
        rng.integers(-1000, 1000, 9).astype(np.int32),
    ):
        path = str(tmp_path / f"a{suffix}")
        datasets.write_idx(path, array)
        got = datasets.read_idx(path)
        assert got.shape == array.shape and got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


def test_idx_header_bytes_are_the_documented_format(tmp_path):
    path = str(tmp_path / "labels")
    datasets.write_idx(path, np.array([3, 1, 4], np.uint8))
    with open(path, "rb") as f:
        raw = f.read()
    assert raw == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 3, 1, 4])  # magic 0x00000801 = MNIST label files


def test_load_mnist_and_tasks(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = _mnist_like(rng, 40)
    datasets.write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), images)
    datasets.write_idx(str(tmp_path / "train-labels-idx1-ubyte"), labels)
    got_images, got_labels = datasets.load_mnist(str(tmp_path), "train")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        datasets.load_mnist(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist(str(tmp_path), "valid")

    x, y = datasets.mnist_task(got_images, got_labels, datasets.MNIST_TASKS["mnist04"])
    keep = [i for i in range(40) if labels[i] <= 4]  # brute force
    assert x.shape == (len(keep), 784) and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x, images[keep].reshape(len(keep), -1) / 255.0)
    np.testing.assert_array_equal(y, labels[keep])
    x01, y01 = datasets.mnist_task(got_images, got_labels, (1, 0))  # order given = label numbering
    np.testing.assert_array_equal(y01, [0 if labels[i] == 1 else 1 for i in range(40) if labels[i] in (0, 1)])
    assert x01.shape[1] == 784


def test_corrupted_idx_files_raise(tmp_path):
    rng = np.random.default_rng(2)
    images, labels = _mnist_like(rng, 6)
    good = tmp_path / "good"
    datasets.write_idx(str(good), images)
    raw = good.read_bytes()

    cases = {
        "bad_magic": (b"\x01\x02" + raw[2:], "magic"),
        "bad_type": (raw[:2] + b"\x07" + raw[3:], "magic"),
        "truncated": (raw[:-5], "bytes"),
        "too_long": (raw + b"\x00", "bytes"),
        "short": (raw[:3], "too short"),
        "cut_header": (raw[:9], "truncated header"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            datasets.read_idx(str(path))
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(gzip.compress(raw)[:-12])  # cut gzip stream
    with pytest.raises(ValueError, match="IDX"):
        datasets.read_idx(str(bad_gz))
    with pytest.raises(FileNotFoundError):
        datasets.read_idx(str(tmp_path / "absent"))

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    datasets.write_idx(str(mnist / "t10k-images-idx3-ubyte"), images)
    datasets.write_idx(str(mnist / "t10k-labels-idx1-ubyte"), labels[:5])
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        datasets.load_mnist(str(mnist), "test")
    datasets.write_idx(str(mnist / "t10k-labels-idx1-ubyte"), np.full(6, 12, np.uint8))
    with pytest.raises(ValueError, match="digits 0..9"):
        datasets.load_mnist(str(mnist), "test")
    datasets.write_idx(str(mnist / "t10k-images-idx3-ubyte"), images.reshape(6, -1))
    with pytest.raises(ValueError, match="rows, cols"):
        datasets.load_mnist(str(mnist), "test")


def test_bundled_sklearn_datasets():
    shapes = {"digits01": (360, 64, 2), "digits04": (901, 64, 5), "iris": (150, 4, 3), "wine": (178, 13, 3)}
    for name, (n, d, k) in shapes.items():
        x, y = datasets.sklearn_dataset(name)
        assert x.shape == (n, d) and x.dtype == np.float64 and sorted(set(y.tolist())) == list(range(k))
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.sklearn_dataset("mnist")
    with pytest.raises(ValueError, match="none of the classes"):
        datasets.select_classes(np.zeros((3, 2)), np.array([1, 1, 2]), (7,))


def test_best_permutation_accuracy_equals_brute_force():
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, (20, 30))
    pred = rng.integers(0, 4, (20, 30))
    mask = rng.random((20, 30)) < 0.8
    got = label_metrics.best_permutation_accuracy(true, pred, mask)
    for b in range(20):
        best = max(
            np.sum((np.asarray(p)[pred[b]] == true[b]) & mask[b]) for p in itertools.permutations(range(4))
        )
        assert got[b] == pytest.approx(best / mask[b].sum())
    relabelled = np.array([[2, 2, 0, 1]])  # a pure relabelling of [0, 0, 1, 2] is perfect
    assert label_metrics.best_permutation_accuracy(np.array([[0, 0, 1, 2]]), relabelled)[0] == 1.0
    with pytest.raises(ValueError, match="labels must both be"):
        label_metrics.best_permutation_accuracy(true[0], pred[0])


@pytest.mark.slow
def test_phase_transition_separation_and_thresholds():
    n, b = 128, 0.1
    line = phase_transition.line_delta(n, b)
    assert phase_transition.a_for(1.0, b) == pytest.approx(1.0 + 2.0 * b)  # the official line a = 1 + 2b
    # rho = 2: half the distance between the means sits on Ndaoud's threshold (1 + sqrt(1 + 2b)) log n
    assert (2.0 * line / 2.0) ** 2 == pytest.approx((1.0 + math.sqrt(1.0 + 2.0 * b)) * math.log(n))
    for rho in (0.75, 1.0, 2.0):
        a = phase_transition.a_for(rho, b)
        task = sample_phase_transition_tasks(jax.random.key(0), n, a, b, 3)
        dist = np.linalg.norm(np.asarray(task.means[:, 0] - task.means[:, 1]), axis=-1)
        np.testing.assert_allclose(dist, rho * line, rtol=1e-5)
        assert task.points.shape == (3, n, phase_transition.dimension(n, b)) == (3, n, 62)
    with pytest.raises(ValueError, match="below the smallest separation"):
        phase_transition.a_for(0.3, b)
    padded = phase_transition.pad_components(task, 5)
    assert padded.means.shape == (3, 5, 62) and padded.component_mask.sum() == 6


def test_preprocess_is_fitted_on_the_fitting_half():
    rng = np.random.default_rng(4)
    x_fit, x_eval = rng.normal(3.0, 2.0, (50, 10)), rng.normal(3.0, 2.0, (40, 10))
    x_fit[:, 3] = 1.0  # a constant feature stays 0, not NaN
    for view, dim in (("std", 10), ("pca8", 8)):
        z_fit, z_eval = real_data.preprocess(x_fit, x_eval, view)
        assert z_fit.shape == (50, dim) and z_eval.shape == (40, dim) and np.isfinite(z_eval).all()
        np.testing.assert_allclose(z_fit.mean(axis=0), 0.0, atol=1e-10)
        assert np.mean(z_fit**2) == pytest.approx(real_data.TRAINING_VARIANCE)
    _, z_eval = real_data.preprocess(x_fit, x_eval, "std")
    sd = x_fit.std(axis=0)
    sd[3] = 1.0
    z0_fit, z0_eval = (x_fit - x_fit.mean(axis=0)) / sd, (x_eval - x_fit.mean(axis=0)) / sd
    np.testing.assert_allclose(z_eval, z0_eval / np.sqrt(np.mean(z0_fit**2) / real_data.TRAINING_VARIANCE))
    with pytest.raises(ValueError, match="pca8 needs D >= 8"):
        real_data.preprocess(x_fit[:, :4], x_eval[:, :4], "pca8")
    with pytest.raises(ValueError, match="unknown view"):
        real_data.preprocess(x_fit, x_eval, "whiten")


def test_real_data_reads_the_rebuttals_mnist_tasks_from_idx_files(tmp_path):
    rng = np.random.default_rng(5)
    images, labels = _mnist_like(rng, 60)
    datasets.write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images)
    datasets.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)
    data = real_data.load_all(["iris"], mnist_dir=str(tmp_path))
    assert list(data) == ["iris", "mnist01", "mnist04"]
    for name, digits in datasets.MNIST_TASKS.items():
        x, y = data[name]
        keep = np.isin(labels, digits)
        assert x.shape == (keep.sum(), 784) and set(y.tolist()) <= set(range(len(digits)))
        np.testing.assert_allclose(x, images[keep].reshape(-1, 784) / 255.0)
