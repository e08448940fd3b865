r"""
The README example: a budget and a floor
========================================

Minimize :math:`\|x - c\|^2` for :math:`c = (0.9, 0.6, 0.1, -0.4)` subject to a budget
:math:`\sum_i x_i \le 1` and a floor :math:`x_i \ge 0.2` for every entry. The answer is
:math:`x^\star = (0.4, 0.2, 0.2, 0.2)`, with multipliers :math:`\lambda_{total} = 1` and
:math:`\lambda_{floor} = (0, 0.2, 1.2, 2.2)` (the floor binds on the last three entries, and it
binds harder the further their target lies below 0.2).

This is the 20-line example of the README, with the iterates and the KKT report recorded.
"""

# %%
# The problem and the optimizer
# -----------------------------
import matplotlib.pyplot as plt
import torch

import conopt

target = torch.tensor([0.9, 0.6, 0.1, -0.4])


class Budget(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.total = conopt.Constraint("<=")  # sum(x) <= 1
        self.floor = conopt.Constraint("<=", shape=4)  # x >= 0.2, entry-wise

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=((x - target) ** 2).sum(),
            constraints={self.total: x.sum() - 1, self.floor: 0.2 - x},
        )


x = torch.zeros(4, requires_grad=True)
problem = Budget()
optimizer = conopt.optim.SimultaneousGDA(
    problem,
    primal=torch.optim.SGD([x], lr=0.05),
    dual=torch.optim.SGD(problem.dual_parameters(), lr=0.05, maximize=True),
)

# %%
# Training, recording each step's report
# --------------------------------------
# ``report.kkt`` reads the residuals of the KKT conditions; ``stationarity`` must be read before
# the next step starts (it is computed lazily from the step's gradients).
xs, residuals = [], []
for _ in range(2000):
    report = optimizer.step(lambda: problem.evaluate(x))
    xs.append(x.detach().clone())
    kkt = report.kkt
    residuals.append((kkt.max_violation, kkt.max_complementary_slackness, kkt.stationarity))

print("x          =", [round(v, 4) for v in x.tolist()])
print("lambda_tot =", round(problem.total.multiplier.weight.item(), 4))
print("lambda_flr =", [round(v, 4) for v in problem.floor.multiplier.weight.tolist()])
print(report.kkt)

# %%
# The iterates and the KKT residuals
# ----------------------------------
# The violation, the complementary slackness :math:`\max_i |\lambda_i g_i|` and the norm of the
# Lagrangian's gradient all go to zero: the iterate converges to the KKT point.
xs = torch.stack(xs)
residuals = torch.tensor(residuals)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
for i in range(4):
    left.plot(xs[:, i], label=f"$x_{i + 1}$")
left.axhline(0.2, color="k", ls=":", lw=1)
left.set(xlabel="step", ylabel="value", title="iterates")
left.legend()
for column, name in enumerate(["max violation", "complementary slackness", "stationarity"]):
    right.semilogy(residuals[:, column].clamp_min(1e-12), label=name)
right.set(xlabel="step", title="KKT residuals")
right.legend()
plt.show()
