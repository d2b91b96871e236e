"""The complete-data estimate of the oracle-labels diagnostic, against a NumPy loop."""

import jax
import numpy as np

from experiments.studies.hard_regime.oracle_labels import complete_data_mle
from tgmm_jax.tasks import TaskSpec, sample_tasks


def test_complete_data_mle_is_each_components_sample_mean_and_share():
    spec = TaskSpec(dim=3, ks=(2, 4), n_max=12, n_min=6)
    task = sample_tasks(jax.random.key(0), spec, 3)
    est = complete_data_mle(task)
    points, labels, mask = (np.asarray(a) for a in (task.points, task.labels, task.point_mask))
    for b in range(points.shape[0]):
        real = mask[b]
        for k in range(int(task.num_components[b])):
            members = real & (labels[b] == k)
            np.testing.assert_allclose(est.weights[b, k], members.sum() / real.sum(), rtol=1e-6)
            if members.any():
                np.testing.assert_allclose(est.means[b, k], points[b][members].mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(est.weights)[~np.asarray(task.component_mask)] == 0)
