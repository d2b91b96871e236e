"""Executable theory: explicit transformer weights from the paper's Theorems 1 and 2 (docs/theory.md).

``power``: ReLU attention computing the tensor power update T(I, v, v) exactly (Theorem 2).
``em``: softmax attention + ReLU MLPs running L EM steps of an isotropic unit-variance GMM (Theorem 1).
``blocks``: the attention / MLP blocks as pure functions on plain parameter dicts.
"""
