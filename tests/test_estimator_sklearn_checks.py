"""scikit-learn's ``check_estimator`` on TGMMEstimator (a tiny random-init clustering model: quick to compile).

Every check passes; ``KNOWN_FAILURES`` (check name -> why it cannot pass) is where one that cannot pass would
be listed, and the test asserts that no other check fails.
"""

import pytest
from sklearn.utils.estimator_checks import check_estimator

from tests.estimator_helpers import save_tiny_checkpoint
from tgmm_jax.estimator import TGMMEstimator

KNOWN_FAILURES: dict[str, str] = {}  # none with scikit-learn 1.9


@pytest.mark.slow
def test_check_estimator(tmp_path):
    path = save_tiny_checkpoint(str(tmp_path / "tiny"))
    results = []
    check_estimator(
        TGMMEstimator(2, checkpoint=path),
        expected_failed_checks=KNOWN_FAILURES,
        on_fail=None,
        callback=lambda **kw: results.append(kw),
    )
    assert len(results) > 30  # the checks ran
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed, failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= {"check_array_api_input"}, skipped  # needs SCIPY_ARRAY_API; nothing else is skipped
