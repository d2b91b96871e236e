"""experiments.distill_pool: the bayes targets with and without responsibilities come from the same chains."""

import numpy as np
import pytest

from experiments import distill_pool
from tgmm_jax.tasks import TaskSpec
from tgmm_jax.train import target_pool

SPEC = TaskSpec(dim=2, ks=(2, 3), n_max=8)


@pytest.mark.slow
def test_responsibilities_pool_has_the_same_means_and_soft_labels_that_fit_the_labels(tmp_path):
    plain = distill_pool.build_dimension(SPEC, str(tmp_path / "plain"), per_k=3, chunk=4, seed=5)
    soft = distill_pool.build_dimension(
        SPEC, str(tmp_path / "soft"), per_k=3, chunk=4, seed=5, responsibilities=True
    )
    with np.load(plain) as a, np.load(soft) as b:
        assert "target_responsibilities" not in a.files
        for name in ("points", "labels", "target_weights", "target_means"):
            np.testing.assert_array_equal(a[name], b[name])
        resp, labels, mask = b["target_responsibilities"], b["labels"], b["point_mask"]
    np.testing.assert_allclose(resp.sum(-1)[mask], 1.0, atol=1e-4)
    # aligned to the task's components: the most probable component is mostly the true one
    assert np.mean(resp.argmax(-1)[mask] == labels[mask]) > 0.8
    pool = target_pool.load_pool(str(tmp_path / "soft"), SPEC)
    assert pool.batch.target_responsibilities.shape == (6, 8, 3)
    with pytest.raises(ValueError, match="needs --targets=bayes"):
        distill_pool.build_dimension(
            SPEC, str(tmp_path / "t"), 3, 4, 5, targets="truth", responsibilities=True
        )
