"""scikit-learn's ``check_estimator`` on TGMMEstimator (a tiny random-init clustering model: quick to compile).

Every check passes; ``KNOWN_FAILURES`` (check name -> why it cannot pass) is where one that cannot pass would
be listed, and the test asserts that no other check fails.
"""

import jax
import numpy as np
import pytest
from sklearn.utils.estimator_checks import check_estimator

from tgmm_jax import pretrained
from tgmm_jax.estimator import TGMMEstimator
from tgmm_jax.models import make_model, model_config
from tgmm_jax.tasks import TaskSpec

KNOWN_FAILURES: dict[str, str] = {}  # none with scikit-learn 1.9


@pytest.mark.slow
def test_check_estimator(tmp_path):
    cfg = model_config(
        "tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8,
        readin="normalized", readout="cluster", project_rank=2, cluster_iters=2,
        slot_init="farthest+greedy+smooth3",
    )  # fmt: skip
    spec = TaskSpec(dim=2, ks=(2, 3), n_max=16)
    params = make_model(cfg, spec).init(
        jax.random.key(0), np.zeros((1, 16, 2), np.float32), np.ones((1, 16), bool), np.array([2])
    )
    path = pretrained.save_exported(str(tmp_path / "tiny"), cfg, spec, params["params"])
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
