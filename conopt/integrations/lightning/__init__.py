"""Constraints in a Lightning ``LightningModule``, trained by Lightning's automatic optimization.

Three additions to an existing module (see the how-to *Constraints in a LightningModule*):

1. derive it from :class:`~conopt.integrations.lightning.module.ConstrainedLightningModule`
   and declare the problem as an attribute (``self.problem = MyProblem()``);
2. return ``self.lagrangian(state)`` from ``training_step`` instead of the loss;
3. return a
   :class:`~conopt.integrations.lightning.optimizer.LightningConstrainedOptimizer` wrapping a
   :class:`~conopt.optim.simultaneous.SimultaneousGDA` from ``configure_optimizers``.

**Why an optimizer that Lightning drives, and a module base class.** Lightning's automatic
optimization accepts exactly one optimizer and gives it a closure that runs ``training_step`` and
the backward pass; its precision plugins, gradient clipping, gradient accumulation, DDP
``no_sync`` and checkpoints are all organized around that one ``optimizer.step(closure)``. conopt's
simultaneous step is one forward, one backward and one update of both players, so it fits that
slot exactly: wrapped as one torch optimizer whose parameter groups are the model's, it keeps
every one of those features, where manual optimization would give them up (Lightning refuses
``accumulate_grad_batches`` and ``gradient_clip_val`` under manual optimization) and a callback
could not return the Lagrangian from ``training_step`` nor see a ``GradScaler``'s skipped steps.
The base class adds what only a ``LightningModule`` can do: ``self.log`` the KKT report after
each step, check checkpoints and the optimizer configuration, and keep the multipliers out of
DDP's gradient all-reduce.

Needs ``lightning`` 2.x: ``pip install torch-conopt[lightning]``.
"""

try:
    import lightning
    import lightning.pytorch
except ImportError as error:  # pragma: no cover - exercised with lightning hidden
    raise ImportError(
        "conopt.integrations.lightning needs the 'lightning' package (Lightning 2.x), which is "
        "not installed: pip install torch-conopt[lightning]"
    ) from error

if int(lightning.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"conopt.integrations.lightning needs lightning 2.x, found {lightning.__version__}: "
        "pip install torch-conopt[lightning]"
    )

from conopt.integrations.lightning.module import ConstrainedLightningModule
from conopt.integrations.lightning.optimizer import LightningConstrainedOptimizer

__all__ = ["ConstrainedLightningModule", "LightningConstrainedOptimizer"]
