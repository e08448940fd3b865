r"""
Solving a small deterministic problem with ``conopt.solve``
===========================================================

:func:`conopt.solve` is for small, full-batch problems that must be solved to high accuracy: the
method of multipliers with an L-BFGS inner loop (see :mod:`conopt.solver`). The problem is an
ordinary :class:`~conopt.problem.ConstrainedProblem`, so the same class can be trained with a
constrained optimizer on mini-batches and solved exactly on the full data.

Hock–Schittkowski problem 71
----------------------------

A classic test problem with an inequality, an equality and bounds:

.. math::

    \min_{x \in [1, 5]^4}\ x_1 x_4 (x_1 + x_2 + x_3) + x_3
    \quad\text{s.t.}\quad x_1 x_2 x_3 x_4 \ge 25,\quad \|x\|^2 = 40,

whose optimum is :math:`f^\star = 17.0140173` at
:math:`x^\star \approx (1, 4.7430, 3.8211, 1.3794)`.
"""

import matplotlib.pyplot as plt
import torch

import conopt


class HS71(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.product = conopt.Constraint("<=")  # 25 - x1 x2 x3 x4 <= 0
        self.sphere = conopt.Constraint("==")  # |x|^2 - 40 = 0

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=x[0] * x[3] * (x[0] + x[1] + x[2]) + x[2],
            constraints={self.product: 25 - x.prod(), self.sphere: (x**2).sum() - 40},
        )


x0 = torch.tensor([1.0, 5.0, 5.0, 1.0], dtype=torch.float64)  # float64 for accuracy
result = conopt.solve(HS71(), x0, lower=1.0, upper=5.0)
print(result.message)
print("x           =", [round(v, 6) for v in result.x.tolist()])
print(f"f           = {result.fun:.7f}   (known optimum 17.0140173)")
print("multipliers =", {k: round(float(v), 6) for k, v in result.multipliers.items()})
print("lower-bound multipliers =", [round(v, 4) for v in result.bound_multipliers[0].tolist()])
print(result.kkt)
print(f"{result.nit} outer iterations, {result.ninner} L-BFGS iterations, {result.nfev} calls")

# %%
# The multipliers are also written into the problem's own multipliers, and the first lower bound
# is active (:math:`x_1 = 1`), so it has a positive bound multiplier.
#
# A picture in two dimensions
# ---------------------------
# The Rosenbrock function restricted to the unit disk: the unconstrained minimum :math:`(1, 1)`
# lies outside, so the solution sits on the circle, near :math:`(0.7864, 0.6177)`, where the
# gradient of the objective is parallel to the constraint's normal (the KKT stationarity
# condition, :math:`\nabla f = -\lambda \nabla g` with :math:`\lambda > 0`).


class RosenbrockInDisk(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.disk = conopt.Constraint("<=")

    def evaluate(self, x):
        rosenbrock = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        return conopt.ProblemState(rosenbrock, {self.disk: (x**2).sum() - 1})


disk = conopt.solve(RosenbrockInDisk(), torch.tensor([-1.0, 0.0], dtype=torch.float64))
print(
    "solution",
    [round(v, 5) for v in disk.x.tolist()],
    "multiplier",
    round(float(disk.multipliers["disk"]), 5),
    "|",
    disk.message,
)

u, v = torch.meshgrid(torch.linspace(-1.5, 1.5, 300), torch.linspace(-1.5, 1.5, 300), indexing="xy")
f = (1 - u) ** 2 + 100 * (v - u**2) ** 2
theta = torch.linspace(0, 2 * torch.pi, 200)
fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
ax.contour(u, v, f.log1p(), levels=25, cmap="Greys")
ax.plot(theta.cos(), theta.sin(), color="tab:blue", label="constraint boundary")
ax.plot(1, 1, "k*", markersize=10, label="unconstrained minimum")
ax.plot(*disk.x.tolist(), "o", color="tab:red", label="conopt.solve")
ax.set(aspect="equal", title="Rosenbrock in the unit disk")
ax.legend(loc="lower left", fontsize=8)
plt.show()
