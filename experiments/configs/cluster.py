"""The dimension-free clustering TGMM: one checkpoint for every d, trained on a CPU budget.

Normalised read-in (each task centred, projected on its top ``rank`` principal directions, rescaled), a 3-layer
set-transformer backbone (width 64, ``heads`` 2), the clustering read-out (K slots refined over ``iters``
iterations with an exact E-step logit term), est_matched + the responsibility cross-entropy, and mixed-d training
(d cycles through 2, 8, 32 step by step). The slots start from seeds of the task's points (ModelConfig.slot_init):
trained from ``init`` (default farthest+greedy: a farthest-first traversal and greedy k-means-cost seeds, best
likelihood per task; ``init=learned`` is the earlier learned-only start) and evaluated from ``eval_init`` (default
four seedings, adding farthest-first on 3- and 12-nearest-neighbour averages; the seedings have no parameters,
and ``eval_init=`` evaluates as trained). Evaluation during training is at ``d`` (default 8).

    python -m experiments.train --config=experiments/configs/cluster.py --workdir=runs/cluster
    --config=experiments/configs/cluster.py:steps=4000,layers=2,iters=3,rank=6,resp=1.0,dims=2/8/32
    --config=experiments/configs/cluster.py:n=32,n_min=16,dims=2,d=2,correction=1   # small N, learned correction
    --config=experiments/configs/cluster.py:correction=1,noise=conditioned   # known or unknown noise variance
    # a curriculum stage: N log-uniform on 16..128, starting from another run's parameters
    --config=experiments/configs/cluster.py:n=128,n_min=16,n_dist=log_uniform,init_from=runs/noise_cond3
    # distillation: tasks from a pool with Bayes posterior means as targets (experiments.distill_pool builds it)
    --config=experiments/configs/cluster.py:n=32,n_min=16,dims=2/8,d=2,correction=1,noise=conditioned,pool=runs/distill_pool
    # missing values: coordinates masked at per-task rates U(0, 0.5) and filled; the read-in told the mask
    --config=experiments/configs/cluster.py:missing=0.5,mask_readin=1,init_from=cluster
    # more components: K = 2..8 from cluster's parameters (the K tables grow), Algorithm 1 without the cosine
    # filter (at d = 2 it accepts 0.8% of the draws at K = 6 and too few at K = 8): the K posterior's prior
    --config=experiments/configs/cluster.py:ks=2/3/4/5/6/7/8,cos=1.0,init_from=cluster
    # the same Ks with the paper's filter kept where it can place the means (K <= 5), none above
    --config=experiments/configs/cluster.py:ks=2/3/4/5/6/7/8,cos=0.8,cos_max_k=5,init_from=cluster
"""

from experiments.configs import args
from tgmm_jax.train.config import default_config, model_group


def get_config(arg: str | None = None):
    a = args.parse(
        arg,
        dict(
            d=8,
            n=128,
            steps=6000,
            layers=3,
            width=64,
            iters=3,
            rank=6,
            resp=1.0,
            dims="2/8/32",
            tasks_per_k=16,
            lr=1e-3,
            init="farthest+greedy",
            eval_init="farthest+greedy+smooth3+smooth12",
            heads=2,
            correction=0,
            n_min=0,
            noise="unit",
            n_dist="uniform",
            init_from="",
            pool="",
            missing=0.0,
            mask_readin=0,
            ks="2/3/4/5",
            cos=0.8,
            cos_max_k=0,
        ),
    )
    config = default_config()
    config.seed = 0
    config.total_steps = a["steps"]
    config.tasks_per_k = a["tasks_per_k"]
    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint_every = 250
    config.objective = "est_matched"
    config.resp_weight = a["resp"]
    config.train_dims = tuple(int(d) for d in a["dims"].split("/")) if a["dims"] else ()
    config.task.dim = a["d"]
    config.task.n_max = a["n"]
    config.task.ks = tuple(int(k) for k in str(a["ks"]).split("/"))
    config.task.cos_threshold = float(a["cos"])
    if a["cos_max_k"]:  # default: the filter applies to every K
        config.task.cos_filter_max_k = int(a["cos_max_k"])
    if a["n_min"]:  # default: n // 2
        config.task.n_min = a["n_min"]
    config.task.n_distribution = a["n_dist"]
    config.init_from = a["init_from"]
    config.target_pool = a["pool"]
    config.missing_rate_max = float(a["missing"])
    config.model = model_group(
        "small",
        backbone="set",
        num_layers=a["layers"],
        width=a["width"],
        task_embed_dim=16,
        readin="normalized",
        project_rank=a["rank"],
        readout="cluster",
        cluster_iters=a["iters"],
        slot_init=a["init"],
        num_heads=a["heads"],
        cluster_correction=bool(a["correction"]),
        noise=a["noise"],
        readin_mask=bool(a["mask_readin"]),
    )
    config.optim.learning_rate = a["lr"]
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = min(200, a["steps"] // 10)
    config.optim.weight_decay = 1e-4
    config.optim.grad_clip_norm = 1.0
    config.eval.tasks_per_k = 64
    config.eval.baselines = ("em", "em_kmeanspp", "spectral")
    config.eval.slot_init = a["eval_init"] if a["init"] != "learned" and a["eval_init"] else None
    return config
