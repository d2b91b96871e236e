"""Real datasets for the real-data study: scikit-learn's bundled sets and MNIST IDX files a user has locally.

Nothing here downloads: ``sklearn_dataset`` reads the copies that ship inside scikit-learn (digits, iris,
wine), and ``read_idx`` / ``load_mnist`` read IDX files from a directory the user names.

This lives in ``experiments/`` rather than the library: ``tgmm_jax`` is the estimator and what it needs
(tasks, mixture math, models); reading a file format and picking digit classes are the study's inputs.
A user who wants MNIST in the estimator calls ``mnist_task`` and hands the array to ``TGMMEstimator.fit``.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type codes (third magic byte) -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# name -> (scikit-learn loader, classes kept); K = len(classes)
SKLEARN_DATASETS = {
    "digits01": ("load_digits", (0, 1)),
    "digits04": ("load_digits", (0, 1, 2, 3, 4)),
    "iris": ("load_iris", (0, 1, 2)),
    "wine": ("load_wine", (0, 1, 2)),
}
MNIST_TASKS = {"mnist01": (0, 1), "mnist04": (0, 1, 2, 3, 4)}  # the rebuttal's two MNIST tasks


def select_classes(x_NxD, y_N, classes) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``classes`` (float64), labels renumbered 0..len(classes)-1 in the order given."""
    y_N = np.asarray(y_N)
    keep = np.isin(y_N, classes)
    if not keep.any():
        raise ValueError(f"none of the classes {tuple(classes)} occur in the labels")
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray(x_NxD, np.float64)[keep], np.array([lookup[c] for c in y_N[keep]], np.int32)


def sklearn_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X [N, D] float64, y [N] int32 in 0..K-1) of one of ``SKLEARN_DATASETS`` (bundled, no download)."""
    if name not in SKLEARN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(SKLEARN_DATASETS)}")
    import sklearn.datasets

    loader, classes = SKLEARN_DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)()
    return select_classes(bunch.data, bunch.target, classes)


# ----------------------------------------------------------------------------------------------------
# IDX files (MNIST's format): magic 0x00 0x00 <type> <ndim>, ndim big-endian int32 sizes, then the data.


def _open(path: str):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped or not), with its magic number and size checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no IDX file at {path}")
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot be read as an IDX file ({e})") from e
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type TT in "
            f"{sorted(hex(t) for t in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated header ({len(data)} bytes, {header} needed for {ndim} dimensions)"
        )
    shape = tuple(int(s) for s in np.frombuffer(data[4:header], ">u4"))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} of {dtype.name} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data[header:], dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file (gzipped when ``path`` ends in .gz); used by the tests."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    if array.dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, codes))}")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(payload)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"neither {stem} nor {stem}.gz in {directory}")


def load_mnist(directory: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images [N, rows, cols] uint8, labels [N] uint8) from MNIST's IDX files in ``directory``.

    ``split`` 'train' reads train-images-idx3-ubyte / train-labels-idx1-ubyte, 'test' the t10k- files
    (the rebuttal clustered the test split); each may be gzipped (.gz).
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"MNIST images must be uint8 [N, rows, cols]; got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"MNIST labels must be uint8 [N]; got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"MNIST labels must be digits 0..9; found {int(labels.max())}")
    return images, labels


def mnist_task(images, labels, digits) -> tuple[np.ndarray, np.ndarray]:
    """(X [N, rows*cols] float64 pixels in [0, 1], y [N] int32 in 0..len(digits)-1) for the given digits:
    ``MNIST_TASKS['mnist01']`` = 0-vs-1 and ``['mnist04']`` = digits 0-4, the rebuttal's 784-dim tasks
    (projection to the model's d is the study's preprocessing, ``experiments.studies.real_data.run.preprocess``)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be [N, rows, cols]; got shape {images.shape}")
    return select_classes(images.reshape(images.shape[0], -1) / 255.0, labels, tuple(digits))
