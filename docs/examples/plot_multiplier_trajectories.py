r"""
Multiplier trajectories of each optimizer
=========================================

The same toy problem as the README (a budget :math:`\sum_i x_i \le 1` and a floor
:math:`x \ge 0.2`), solved with each constrained optimizer of :mod:`conopt.optim`, with a dual
learning rate large enough (0.25) that the differences show. The figure tracks the budget's
multiplier :math:`\lambda_{total}`, whose optimal value is 1, and the budget's constraint value
:math:`g = \sum_i x_i - 1`, whose optimal value is 0.

* **Simultaneous GDA** overshoots and oscillates around :math:`\lambda^\star` before settling:
  the multiplier reacts to the violation one step late, and both players move at once.
* **Alternating GDA** (primal first) updates the multiplier from the constraint at the *new*
  point, which damps the oscillation, for one extra evaluation per step.
* **Extragradient** looks one step ahead and updates from there: no overshoot, for two
  evaluations and two backward passes per step.
* **nuPI** keeps simultaneous GDA but gives the multiplier a proportional term
  (:math:`K_P = 2`): it reacts to the *change* of the violation, which damps the oscillation at
  no extra evaluation.
* **Dual restarts** set the multiplier to 0 whenever the constraint is strictly satisfied. Here
  the budget is active at the optimum, so each overshoot into the feasible region resets
  :math:`\lambda` and the iterate never settles: restarts are meant for constraints one is
  happy to *over*-satisfy (like a sparsity target), not for ones that bind.
"""

import matplotlib.pyplot as plt
import torch

import conopt

target = torch.tensor([0.9, 0.6, 0.1, -0.4])


class Budget(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.total = conopt.Constraint("<=")
        self.floor = conopt.Constraint("<=", shape=4)

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=((x - target) ** 2).sum(),
            constraints={self.total: x.sum() - 1, self.floor: 0.2 - x},
        )


PRIMAL_LR, DUAL_LR, STEPS = 0.05, 0.25, 300


def build(name, problem, x):
    """The constrained optimizer called ``name`` for ``problem`` and the variable ``x``."""
    duals = problem.dual_parameters()
    if name == "Extragradient":
        return conopt.optim.Extragradient(
            problem,
            conopt.optim.ExtraSGD([x], lr=PRIMAL_LR),
            conopt.optim.ExtraSGD(duals, lr=DUAL_LR, maximize=True),
        )
    primal = torch.optim.SGD([x], lr=PRIMAL_LR)
    if name == "nuPI (K_P = 2)":
        dual = conopt.optim.nuPI(duals, lr=DUAL_LR, kp=2.0, ki=1.0, maximize=True)
    else:
        dual = torch.optim.SGD(duals, lr=DUAL_LR, maximize=True)
    if name == "AlternatingGDA":
        return conopt.optim.AlternatingGDA(problem, primal, dual)
    restarts = name == "SimultaneousGDA + dual restarts"
    return conopt.optim.SimultaneousGDA(problem, primal, dual, dual_restarts=restarts)


names = [
    "SimultaneousGDA",
    "AlternatingGDA",
    "Extragradient",
    "nuPI (K_P = 2)",
    "SimultaneousGDA + dual restarts",
]


def run(name):
    """Train from x = 0; return the budget's multiplier and value at every step, and x."""
    x = torch.zeros(4, requires_grad=True)
    problem = Budget()
    optimizer = build(name, problem, x)
    multipliers, values = [], []
    for _ in range(STEPS):
        report = optimizer.step(lambda: problem.evaluate(x))
        multipliers.append(problem.total.multiplier.weight.item())
        values.append(report.constraints["total"].strict_value.item())
    return multipliers, values, x.detach()


trajectories = {}
for name in names:
    multipliers, values, x = run(name)
    trajectories[name] = (multipliers, values)
    rounded = [round(v, 3) for v in x.tolist()]
    print(f"{name:<32} lambda_total = {multipliers[-1]:.4f}   x = {rounded}")

# %%
# The budget's multiplier and constraint value, step by step.
fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained")
for name, (multipliers, values) in trajectories.items():
    style = {"lw": 1.0, "alpha": 0.7} if "restarts" in name else {"lw": 1.8}
    axes[0].plot(multipliers, label=name, **style)
    axes[1].plot(values, label=name, **style)
axes[0].axhline(1.0, color="k", ls="--", lw=1)
axes[0].set(ylabel=r"$\lambda_{total}$", title="multiplier of the budget (optimum: 1)")
axes[1].axhline(0.0, color="k", ls="--", lw=1)
axes[1].set(xlabel="step", ylabel=r"$g = \sum_i x_i - 1$", title="budget constraint (optimum: 0)")
axes[1].set_ylim(-0.6, 0.3)
axes[0].legend(fontsize=8, loc="lower right")
plt.show()
