r"""
Per-sample constraints with an indexed multiplier
=================================================

Some constraints hold *per training sample*: "every sample's loss is at most
:math:`\epsilon`", "every prediction stays within a band". Each such constraint has its own
multiplier, and a mini-batch touches only the rows of its samples:
:class:`~conopt.multipliers.IndexedMultiplier` keeps one multiplier per sample, and each
evaluation says which rows it uses with ``ConstraintState(value, indices=...)``.

Here a linear classifier of 2-D points minimizes the norm of its weights subject to a
cross-entropy of at most :math:`\epsilon = 0.1` on *every* training point:

.. math::

    \min_{W, b}\ \tfrac12 \left(\|W\|^2 + \|b\|^2\right)
    \quad\text{s.t.}\quad \mathrm{CE}(W x_i + b, y_i) - \epsilon \le 0
    \quad (i = 1, \dots, 200).

It is a smooth cousin of the support vector machine: at the solution, only the points near
the decision boundary have a positive multiplier (they are the ones that hold the weights
up), and every other multiplier is 0.
"""

from functools import partial

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import conopt

torch.manual_seed(0)
n, epsilon = 200, 0.1
points = torch.randn(n, 2)
labels = (points[:, 0] + points[:, 1] > 0).long()
points += 0.3 * (2 * labels[:, None] - 1) * torch.tensor([0.7071, 0.7071])  # a small gap
model = torch.nn.Linear(2, 2)


class EverySampleFits(conopt.ConstrainedProblem):
    def __init__(self, num_samples, epsilon):
        super().__init__()
        self.epsilon = epsilon
        self.fit = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(num_samples))

    def evaluate(self, indices):
        losses = F.cross_entropy(model(points[indices]), labels[indices], reduction="none")
        norm = 0.5 * sum((p**2).sum() for p in model.parameters())
        return conopt.ProblemState(
            loss=norm,
            constraints={self.fit: conopt.ConstraintState(losses - self.epsilon, indices=indices)},
        )


problem = EverySampleFits(n, epsilon)
optimizer = conopt.optim.SimultaneousGDA(
    problem,
    primal=torch.optim.SGD(model.parameters(), lr=0.05),
    dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
)

# %%
# Mini-batches of 50 samples: each step updates the 50 multipliers of its batch (the gradient of
# the multiplier table is dense, zero on the other rows, so Adam or DDP would work as well).
generator = torch.Generator().manual_seed(0)
for _epoch in range(150):
    for batch in torch.randperm(n, generator=generator).split(50):
        report = optimizer.step(partial(problem.evaluate, batch))

multipliers = problem.fit.multiplier.weight.detach()
with torch.no_grad():
    losses = F.cross_entropy(model(points), labels, reduction="none")
print(f"largest loss: {losses.max():.3f} (bound {epsilon})")
print(f"training accuracy: {(model(points).argmax(1) == labels).float().mean():.3f}")
print(f"samples with a multiplier > 0.01: {(multipliers > 0.01).sum().item()} of {n}")

# %%
# After 150 epochs of stochastic steps the iterate is close to, not at, the solution: the
# largest per-sample loss still exceeds the bound a little (mini-batch noise keeps the
# multipliers moving; a decaying learning rate would tighten it). The multipliers have already
# sorted the samples: most are 0, and the positive ones sit along the decision boundary.
with torch.no_grad():
    grid = torch.stack(
        torch.meshgrid(
            torch.linspace(-3.5, 3.5, 200), torch.linspace(-3.5, 3.5, 200), indexing="xy"
        ),
        dim=-1,
    )
    margin = model(grid.reshape(-1, 2)).diff(dim=1).reshape(200, 200)
fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
ax.contour(grid[..., 0], grid[..., 1], margin, levels=[0.0], colors="k")
ax.scatter(*points[labels == 0].T, s=12, c="lightgray", marker="o", label="class 0")
ax.scatter(*points[labels == 1].T, s=12, c="lightgray", marker="s", label="class 1")
active = multipliers > 0.01
scatter = ax.scatter(
    *points[active].T, c=multipliers[active], s=40, cmap="viridis", edgecolors="k", linewidths=0.5
)
fig.colorbar(scatter, label="multiplier $\\lambda_i$")
ax.set(title="per-sample multipliers", xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal")
ax.legend(loc="lower right", fontsize=8)
plt.show()
