"""Fits a Gaussian mixture to a file of points with the pretrained TGMM; prints the parameters as JSON.

    python -m experiments.fit --data=points.npy --n_components=3
    python -m experiments.fit --data=points.csv --n_components=auto --refine=em \\
        --output=fit.json --labels_output=labels.txt

Input, ``--data``:
  .npy  a 2-D numeric array [n_samples, n_features] (pickled objects are refused).
  .csv  comma-separated, one row per sample; blank lines and lines starting with '#' are skipped. The first
        row is a header when none of its fields is a number; a first row that mixes numbers and text is a bad
        data row, not a header. A header whose first field is empty (",a,b") is the index column that
        pandas' ``DataFrame.to_csv`` writes by default: it is refused, never read as a feature; write the
        file with ``to_csv(..., index=False)`` or pass ``--drop_index``, which drops the first column of
        the CSV. Every error names the file's 1-based line number (the header counted) and column.
Missing values:
  An error by default (a NaN in a .npy, an empty field or 'nan' in a CSV; the message names the row or line).
  ``--missing=allow`` reads them as missing (NaN) and fits with the estimator's ``missing="allow"``: the
  network reads the points filled from their nearest neighbours, then EM steps that handle the missing
  coordinates exactly (marginal E-step, expected statistics) run from it; the labels use each point's observed
  coordinates. A row with every value missing is still an error, as is infinity, and so are more than 2048
  points with missing values.
Units:
  Any (``--standardize``, on by default: the estimator centres and rescales each dataset, fits, and maps the
  parameters back; labels do not depend on the units). Variances are estimated, one per component
  (``--covariance_type=spherical``) or per component and feature (``diag``). ``--nostandardize`` takes the
  data to be at the training scale (unit within-component noise), as in the paper's experiments.
  ``--noise_variance=V`` (a number > 0, in the data's units): the within-component noise is known to be
  isotropic with variance V; every component's covariance is V (``covariances`` in the JSON), and BIC/AIC count
  no variance parameters. By default (unset) the variances are estimated.
Output:
  The result (parameters, BIC, AIC, log-likelihood, label counts) as JSON on stdout, or with ``--output=FILE``
  in FILE. It is always valid JSON: a NaN or infinity in the fit is an error; ``bic_by_k`` holds null for a
  K that could not be scored (more components than points). ``--labels_output=FILE`` writes the component
  of every point, in input order: an int64 array when FILE ends in .npy, else text with one integer per
  line. Files are written to a temporary file beside the target, then renamed, and only after the fit
  succeeded. A short summary goes to stderr.
Errors:
  One line ``error: ...`` on stderr, exit code 1 (2 for bad flags or arguments, 130 when interrupted),
  nothing on stdout and no output file written. Log lines below ERROR (JAX's "Unable to initialize
  backend 'tpu'", orbax's and Python's warnings) are off unless ``--verbosity`` is given (``-1`` shows
  warnings, ``0`` INFO); only logging is lowered, the platform is left alone (GPUs are still used).
Compilation:
  The fit's program takes ~10 s to compile and ~2 s to trace; the command keeps two caches, so later runs on
  the same shapes (N bucket, d, number of Ks, settings, checkpoint model) skip both:
    - compiled programs in JAX's persistent compilation cache, ``$XDG_CACHE_HOME/tgmm_jax/jax``
      (``~/.cache/tgmm_jax/jax`` without XDG_CACHE_HOME; a set ``$JAX_COMPILATION_CACHE_DIR`` is used as it is);
    - traced programs (``jax.export`` serializations, ``tgmm_jax.export_cache``) and the checkpoint model's
      parameter shapes, ``$XDG_CACHE_HOME/tgmm_jax/export``, keyed by the shapes, settings, model, library
      source and jax/flax versions; a missing, stale or corrupt entry is traced again, and the output is the
      same, digit for digit, with or without it.
  Both are off with ``--nocompilation_cache`` or ``TGMM_JAX_NO_CACHE=1``. Only this command turns them on:
  importing the library never does. Delete the directories to reclaim the space (a few MB).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from tgmm_jax import export_cache
from tgmm_jax.estimator import TGMMEstimatorCore, check_points  # the core: no scikit-learn import

_DATA = flags.DEFINE_string("data", None, "Points file: .npy or .csv, [n_samples, n_features].")
_K = flags.DEFINE_string(
    "n_components",
    "3",
    "K (in the checkpoint's trained set), 'auto' (the most probable K under the learned P(K | X)) or 'bic' "
    "(the lowest BIC).",
)
_REFINE = flags.DEFINE_enum("refine", "none", ["none", "em"], "EM steps after the network's estimate.")
_EM_STEPS = flags.DEFINE_integer("em_steps", 5, "EM steps when --refine=em.")
_RESTARTS = flags.DEFINE_integer("n_restarts", 0, "Extra k-means++ EM runs when --refine=em.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "pretrained", "'pretrained', a shipped name, or a path.")
_COVARIANCE = flags.DEFINE_enum(
    "covariance_type", "spherical", ["spherical", "diag"], "Variances: one per component, or per feature too."
)
_STANDARDIZE = flags.DEFINE_bool(
    "standardize", True, "Fit in any units (centre, rescale to unit within-component noise, map back)."
)
_NOISE_VARIANCE = flags.DEFINE_float(
    "noise_variance",
    None,
    "Known isotropic noise variance in the data's units (a number > 0); unset: the variances are estimated.",
)
_MISSING = flags.DEFINE_enum(
    "missing", "error", ["error", "allow"], "NaN / empty CSV fields: an error, or missing values (exact EM)."
)
_SEED = flags.DEFINE_integer("seed", 0, "random_state (restarts).")
_DROP_INDEX = flags.DEFINE_bool(
    "drop_index", False, "CSV only: drop the first column (e.g. the index column of pandas' to_csv)."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Write the JSON result to this file (atomically) instead of stdout; '-' is stdout."
)
_LABELS_OUTPUT = flags.DEFINE_string(
    "labels_output",
    None,
    "Write each point's component to this file: .npy (int64 array) or text (one integer per line).",
)
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled and traced programs in persistent caches ($XDG_CACHE_HOME/tgmm_jax/{jax,export}, "
    "~/.cache without XDG_CACHE_HOME) so later runs skip compiling and tracing; also off with "
    "TGMM_JAX_NO_CACHE=1.",
)
flags.mark_flags_as_required(["data"])


def valid_noise_variance(value) -> bool:
    """--noise_variance: unset (None) or a finite number > 0."""
    return value is None or (math.isfinite(value) and value > 0)


flags.register_validator(
    "noise_variance",
    valid_noise_variance,
    message="--noise_variance must be a finite number > 0 (the known noise variance, in the data's units)",
)

NO_CACHE_ENV = "TGMM_JAX_NO_CACHE"

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


# ----------------------------------------------------------------------------------------------------
# Reading the points: every message names the file, and for a CSV the 1-based line and column.


def load_points(path: str, drop_index: bool = False, missing: str = "error") -> np.ndarray:
    """A .npy array or a comma-separated .csv (see the module docstring), as finite float64
    [n_samples, n_features]; a ValueError naming the file (and line) otherwise. ``missing="allow"``: NaN in a
    .npy, and empty fields or 'nan' in a CSV, are missing values (NaN); a row with every value missing is
    still an error."""
    if missing not in ("error", "allow"):
        raise ValueError(f"--missing must be 'error' or 'allow', got {missing!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise ValueError(f"--data must be a .npy or .csv file, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a {ext} file")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if ext == ".csv":
        return _load_csv(path, drop_index, missing == "allow")
    if drop_index:
        raise ValueError("--drop_index applies to .csv files only")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- empty (EOFError), truncated, foreign (UnpicklingError)
        raise ValueError(f"{path}: not a readable .npy array ({_describe(e)})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: holds {type(arr).__name__}, not one array")
    if arr.dtype == bool:
        raise ValueError(f"{path} must hold real numbers; got dtype bool")
    return check_points(arr, name=path, missing=missing)


def _is_number(field: str) -> bool:
    if "_" in field:  # float() accepts 1_000; a CSV reader should not
        return False
    try:
        float(field)
    except ValueError:
        return False
    return True


def _load_csv(path: str, drop_index: bool, allow_missing: bool = False) -> np.ndarray:
    try:
        with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: a byte-order mark is not part of a field
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    header_line, width, first_line = None, None, None
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = [x.strip() for x in next(csv.reader([line]))]
        except csv.Error as e:
            raise ValueError(f"{path}, line {lineno}: {e}") from None
        if first_line is None:
            first_line, width = lineno, len(fields)
            if not any(_is_number(x) for x in fields) and any(fields):  # all text: the header
                header_line = lineno
                if fields[0] == "" and not drop_index:
                    raise ValueError(
                        f"{path}, line {lineno}: the header's first field is empty, the mark of the index "
                        "column pandas' DataFrame.to_csv writes; write the file with "
                        "to_csv(..., index=False) or pass --drop_index to drop the first column"
                    )
                continue
        elif len(fields) != width:
            raise ValueError(
                f"{path}, line {lineno}: {len(fields)} fields, expected {width} (as on line {first_line})"
            )
        if drop_index:
            fields = fields[1:]
        row = _parse_row(path, lineno, fields, lineno == first_line, drop_index, allow_missing)
        if row and all(math.isnan(v) for v in row):
            raise ValueError(
                f"{path}, line {lineno}: every value is missing; such a row carries no information"
            )
        rows.append(row)
    if not rows:
        what = f"a header on line {header_line} but no data rows" if header_line else "no data rows"
        raise ValueError(f"{path}: {what}")
    if not rows[0]:
        raise ValueError(f"{path}: no columns left after --drop_index")
    return np.asarray(rows, np.float64)


def _parse_row(
    path: str, lineno: int, fields: list[str], first: bool, drop_index: bool, allow_missing: bool = False
) -> list[float]:
    values = []
    for col, field in enumerate(fields, start=2 if drop_index else 1):
        where = f"{path}, line {lineno}, column {col}"
        if field == "":
            if allow_missing:
                values.append(math.nan)
                continue
            raise ValueError(f"{where}: missing value (empty field); --missing=allow reads it as missing")
        if not _is_number(field):
            hint = " (a first row is a header only when none of its fields is a number)" if first else ""
            raise ValueError(f"{where}: not a number: {field!r}{hint}")
        value = float(field)
        if math.isnan(value) and allow_missing:
            values.append(math.nan)
            continue
        if not math.isfinite(value):
            hint = "; --missing=allow reads it as missing" if math.isnan(value) else ""
            raise ValueError(f"{where}: missing or non-finite value {field!r}{hint}")
        values.append(value)
    return values


# ----------------------------------------------------------------------------------------------------
# The fit and its JSON.


def fit_points(X: np.ndarray, n_components="3", **params) -> tuple[dict, np.ndarray]:
    """Fits the points ``X``; returns the JSON-ready result (parameters, BIC, AIC, log-likelihood) and the
    component of every point."""
    if n_components in ("auto", "bic"):
        k = n_components
    else:
        try:
            k = int(n_components)
        except (TypeError, ValueError):
            raise ValueError(
                f"--n_components must be an integer, 'auto' or 'bic', got {n_components!r}"
            ) from None
    est = TGMMEstimatorCore(k, **params).fit(X)
    labels = est.predict(X)
    result = {
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "checkpoint": str(est.checkpoint_name_),
        "n_components": est.n_components_,
        "weights": est.weights_.tolist(),
        "means": est.means_.tolist(),
        "covariance_type": est.covariance_type_,
        "covariances": est.covariances_.tolist(),
        "mean_log_likelihood": est.lower_bound_,
        "bic": float(est.bic(X)),
        "aic": float(est.aic(X)),
        # a K that could not be scored (more components than points, a non-finite likelihood): null
        "bic_by_k": {str(kk): v if math.isfinite(v) else None for kk, v in est.bic_by_k_.items()},
        # "auto": the learned P(K | X) for K = 1, 2, ... (null otherwise)
        "posterior_n_components": (
            None if est.posterior_n_components_ is None else est.posterior_n_components_.tolist()
        ),
        "converged": est.converged_,
        "n_iter": est.n_iter_,
        "labels_count": np.bincount(labels, minlength=est.n_components_).tolist(),
    }
    return result, labels


def fit_file(path: str, n_components="3", *, drop_index: bool = False, **params) -> dict:
    """Fits the points in ``path``; returns the JSON-ready result (parameters, BIC, AIC, log-likelihood)."""
    X = load_points(path, drop_index=drop_index, missing=params.get("missing", "error"))
    result, _ = fit_points(X, n_components, **params)
    return {"data": path, **result}


def _non_finite(value, where: str = "") -> list[str]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where]
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        found = [w for i, v in enumerate(value) for w in _non_finite(v, where)]
        return list(dict.fromkeys(found))
    return []


def to_json(result: dict) -> str:
    """The result as strict JSON; a ValueError naming the fields that hold NaN or infinity."""
    bad = _non_finite(result)
    if bad:
        raise ValueError(
            f"the fit gave non-finite values (NaN or infinity) in {', '.join(bad)}; the data may be far "
            "from the training scale (with --nostandardize, try --standardize)"
        )
    return json.dumps(result, indent=1, allow_nan=False)


def summary(result: dict) -> str:
    head = (
        f"{result['n_samples']} points in d={result['n_features']}: K={result['n_components']} "
        f"({result['checkpoint']}), mean log-likelihood {result['mean_log_likelihood']:.4f}, "
        f"BIC {result['bic']:.1f}"
    )
    lines = [head]
    for k, (w, m, n) in enumerate(zip(result["weights"], result["means"], result["labels_count"])):
        mean = ", ".join(f"{x:.3f}" for x in m[:6]) + (", ..." if len(m) > 6 else "")
        lines.append(f"  component {k}: weight {w:.3f}, {n} points, mean [{mean}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Files: checked before the fit, written atomically after it.


def _check_target(path: str, flag: str) -> None:
    if os.path.isdir(path):
        raise ValueError(f"--{flag}={path} is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--{flag}={path}: directory {parent} does not exist")


def _labels_bytes(labels: np.ndarray, path: str) -> bytes:
    labels = np.asarray(labels, np.int64)
    if path.lower().endswith(".npy"):
        buf = io.BytesIO()
        np.save(buf, labels, allow_pickle=False)
        return buf.getvalue()
    return "".join(f"{int(y)}\n" for y in labels).encode()


def write_atomic(files: list[tuple[str, bytes]]) -> None:
    """Writes every (path, content) to a temporary file beside its path, then renames them all into place:
    a reader never sees a half-written file, and a failed write leaves the targets as they were."""
    umask = os.umask(0)
    os.umask(umask)
    staged = []
    try:
        for path, content in files:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.",
                suffix=".tmp",
                dir=os.path.dirname(os.path.abspath(path)),
            )
            staged.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
        for (path, _), tmp in zip(files, staged):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


# ----------------------------------------------------------------------------------------------------
# The command: every failure is one line on stderr and a non-zero exit code.


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _message(e: Exception) -> str:
    if isinstance(e, ValueError):
        text = str(e) or type(e).__name__
    elif isinstance(e, OSError):
        text = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else _describe(e)
    elif "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
        text = f"out of memory on the device ({_describe(e)}); fit fewer points"
    else:
        text = f"unexpected {_describe(e)}"
    text = " ".join(text.split())  # one line, whatever the exception held
    return text if len(text) <= 2000 else text[:1997] + "..."


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(
    data: str,
    n_components="3",
    *,
    output: str | None = None,
    labels_output: str | None = None,
    drop_index: bool = False,
    **params,
) -> int:
    """The command on parsed options: the JSON to stdout (or ``output``), labels to ``labels_output``, the
    summary to stderr; returns the exit code. Failures print one line and write nothing."""
    try:
        to_stdout = output in (None, "", "-")
        if not to_stdout:
            _check_target(output, "output")
        if labels_output:
            _check_target(labels_output, "labels_output")
        X = load_points(data, drop_index=drop_index, missing=params.get("missing", "error"))
        result, labels = fit_points(X, n_components, **params)
        result = {"data": data, **result}
        text = to_json(result)
        files = [(labels_output, _labels_bytes(labels, labels_output))] if labels_output else []
        if not to_stdout:
            files.append((output, (text + "\n").encode()))
        write_atomic(files)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except MemoryError as e:
        return _fail(f"out of memory{f' ({e})' if str(e) else ''}; fit fewer points")
    except Exception as e:  # noqa: BLE001 -- the command's contract: one line, never a traceback
        return _fail(_message(e))
    if to_stdout:
        print(text)
    print(summary(result), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# The persistent compilation cache (the command's, never the library's).


def compilation_cache_dir(environ=None) -> str | None:
    """Where the command keeps compiled programs: None when ``TGMM_JAX_NO_CACHE`` is set (not '' or '0'),
    else ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tgmm_jax/jax`` (``~/.cache`` without
    XDG_CACHE_HOME)."""
    environ = os.environ if environ is None else environ
    if environ.get(NO_CACHE_ENV, "").strip() not in ("", "0"):
        return None
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tgmm_jax", "jax")


def export_cache_dir(environ=None) -> str | None:
    """Where the command keeps traced programs (``tgmm_jax.export_cache``): None when ``TGMM_JAX_NO_CACHE``
    is set (not '' or '0'), else ``$XDG_CACHE_HOME/tgmm_jax/export`` (``~/.cache`` without XDG_CACHE_HOME)."""
    environ = os.environ if environ is None else environ
    if environ.get(NO_CACHE_ENV, "").strip() not in ("", "0"):
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tgmm_jax", "export")


def enable_caches(environ=None) -> None:
    """Turns on both of the command's caches (each unless ``TGMM_JAX_NO_CACHE``): JAX's persistent compilation
    cache and the library's cache of traced programs (``tgmm_jax.export_cache``)."""
    cache = compilation_cache_dir(environ)
    if cache:
        enable_compilation_cache(cache)
    exports = export_cache_dir(environ)
    if exports:
        export_cache.enable(exports)


def enable_compilation_cache(path: str) -> bool:
    """Points JAX's persistent compilation cache at ``path`` (created), caching every program; False (and
    nothing changed) when the directory cannot be made: the cache only saves time."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def main(argv) -> int:
    if not flags.FLAGS["verbosity"].present:  # no log lines (libtpu's INFO, orbax's WARNINGs) unless asked
        absl_logging.set_verbosity(absl_logging.ERROR)
        logging.captureWarnings(True)  # Python warnings (NumPy's overflow in a cast) become such log lines
    if len(argv) > 1:
        return _fail(f"unexpected arguments: {' '.join(argv[1:])}", EXIT_USAGE)
    if _COMPILATION_CACHE.value:
        enable_caches()
    return run(
        _DATA.value,
        _K.value,
        output=_OUTPUT.value,
        labels_output=_LABELS_OUTPUT.value,
        drop_index=_DROP_INDEX.value,
        checkpoint=_CHECKPOINT.value,
        refine=_REFINE.value,
        em_steps=_EM_STEPS.value,
        n_restarts=_RESTARTS.value,
        covariance_type=_COVARIANCE.value,
        standardize=_STANDARDIZE.value,
        noise_variance=_NOISE_VARIANCE.value,
        missing=_MISSING.value,
        random_state=_SEED.value,
    )


def main_and_exit(argv) -> None:
    """``main``, then the process ends at once with its status, after flushing stdout and stderr (every
    output file is written and closed by then). ``os._exit`` skips the interpreter's teardown, where JAX
    frees its CPU client and joins its threads: 0.3-1 s of a warm fit's 3 s that the command does not need
    (measured: ``python -c "import jax; ..."`` 4.2-5.2 s against 3.0-4.0 s with ``os._exit``, load ~7)."""
    status = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad or missing flag reported as one line (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(_fail(" ".join(str(e).split()), EXIT_USAGE))


if __name__ == "__main__":
    app.run(main_and_exit, flags_parser=_parse_flags)
