r"""Lagrange multipliers as ordinary ``nn.Module``\ s with ``nn.Parameter`` weights.

Any ``torch.optim`` optimizer built with ``maximize=True`` drives them (gradient *ascent* on the
Lagrangian). After each dual step the constrained optimizer projects inequality multipliers onto
:math:`\lambda \ge 0`.

* :class:`DenseMultiplier`: one multiplier per entry of the constraint.
* :class:`IndexedMultiplier`: one multiplier per index (for example per training sample), of
  which each evaluation uses the rows named by :attr:`ConstraintState.indices
  <conopt.problem.ConstraintState.indices>`. Its gradient is dense (zeros for unused rows), so
  it works with Adam and with ``torch.distributed`` all-reduce.
* :class:`ImplicitMultiplier`: a model predicting multipliers from features.

Many dense multipliers can share one parameter (:class:`~conopt.multipliers.packed.MultiplierPack`,
made by :meth:`ConstrainedProblem.pack_multipliers
<conopt.problem.ConstrainedProblem.pack_multipliers>`), so that a step with a hundred
constraints costs what one vector constraint costs.

Dense and indexed multipliers are created in the default dtype and follow their constraints'
values: the first step whose values (promoted to at least ``float32``) are wider than a
multiplier widens it, with its gradient and its dual optimizer state, before the multiplier's
gradient is written (see :meth:`Multiplier.follow_dtype_`). A multiplier is never narrowed, and
loading a wider ``state_dict`` widens it too, so a resumed run continues in the same dtype.
"""

from conopt.multipliers.base import Multiplier, dtype_epoch
from conopt.multipliers.dense import (
    DenseMultiplier,
    add_dense_gradients_,
    add_pack_gradient_,
    restart_dense_,
)
from conopt.multipliers.implicit import ImplicitMultiplier
from conopt.multipliers.indexed import IndexedMultiplier
from conopt.multipliers.packed import (
    MultiplierPack,
    converted_dual_state_dict,
    pack_optimizer_state_,
    packed_optimizer_state_dict,
    restart_slice_,
)

__all__ = [
    "DenseMultiplier",
    "ImplicitMultiplier",
    "IndexedMultiplier",
    "Multiplier",
    "MultiplierPack",
    "add_dense_gradients_",
    "add_pack_gradient_",
    "converted_dual_state_dict",
    "dtype_epoch",
    "pack_optimizer_state_",
    "packed_optimizer_state_dict",
    "restart_dense_",
    "restart_slice_",
]
