"""tgmm-jax: transformers that estimate Gaussian-mixture parameters in context.

Shape letters used in tensor names across the package:
  B tasks in a batch, N points per task (padded to N_max), D data dimension,
  K mixture components (padded to K_max), E model width, L layers, H heads.
A suffix such as ``points_BxNxD`` gives a tensor's shape; masks mark the real entries
(``point_mask_BxN``, ``component_mask_BxK``: True = real).
"""

from tgmm_jax.gmm import MixtureParams
from tgmm_jax.tasks import GMMTask, TaskSpec, sample_phase_transition_tasks, sample_task, sample_tasks

__all__ = [
    "GMMTask",
    "MixtureParams",
    "TaskSpec",
    "sample_phase_transition_tasks",
    "sample_task",
    "sample_tasks",
]
