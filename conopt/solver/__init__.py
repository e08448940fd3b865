"""``conopt.solve``: a deterministic solver for small smooth constrained problems.

One job per module:

* :mod:`~conopt.solver.alm`: :func:`solve` and the outer loop of the method of multipliers;
* :mod:`~conopt.solver.schedule`: the multiplier and penalty updates (LANCELOT's rules);
* :mod:`~conopt.solver.lbfgsb`: the inner solver, a bound-aware projected L-BFGS method;
* :mod:`~conopt.solver.subproblem`: the augmented Lagrangian for fixed multipliers over the
  box, and the KKT measures of its iterates;
* :mod:`~conopt.solver.evaluation`: the problem evaluated at flat points, as flat vectors;
* :mod:`~conopt.solver.scaling`: the gradient scaling of the objective and the constraint rows;
* :mod:`~conopt.solver.options`: the checked arguments of :func:`solve`;
* :mod:`~conopt.solver.result`: status codes, :class:`SolveResult` and :class:`OuterIterate`.
"""

from conopt.solver.alm import solve
from conopt.solver.result import OuterIterate, SolveResult

__all__ = ["OuterIterate", "SolveResult", "solve"]
