"""l0_sparsity: train networks to a chosen density with hard-concrete gates and conopt.

Gates and gated layers (:mod:`l0_sparsity.gates`, :mod:`l0_sparsity.layers`), models
(:mod:`l0_sparsity.models`), the density-constrained problem (:mod:`l0_sparsity.problem`),
datasets (:mod:`l0_sparsity.data`), the trainer and CLI (:mod:`l0_sparsity.train`,
:mod:`l0_sparsity.cli`) and purging to a smaller model (:mod:`l0_sparsity.purge`).
"""

__version__ = "0.1.0"
