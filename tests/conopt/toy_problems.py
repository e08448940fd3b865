"""Toy problems shared by the conopt tests: QPs with known solutions, and the small ``Linear``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

import conopt

FormulationFactory = Callable[[], conopt.Formulation]


@dataclass
class QPData:
    """min ½xᵀQx + cᵀx  s.t.  A x − b ≤ 0,  E x − d = 0 (float64 tensors; A, E may have 0 rows)."""

    Q: torch.Tensor
    c: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    E: torch.Tensor
    d: torch.Tensor
    x_star: torch.Tensor | None = None
    lam_star: torch.Tensor | None = None
    mu_star: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.Q.shape[0]

    def f(self, x):
        return 0.5 * x @ self.Q @ x + self.c @ x

    def g(self, x):
        return self.A @ x - self.b

    def h(self, x):
        return self.E @ x - self.d


def _orthogonal(generator: torch.Generator, n: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _uniform(generator, size, low, high):
    return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)


def random_qp(seed: int, n: int, m_ineq: int = 0, m_eq: int = 0) -> QPData:
    """A strictly convex QP whose unique KKT point is known, with strict complementarity.

    Q has eigenvalues in [1, 3]; the stacked constraint matrix [A; E] has singular values in
    [1, 2] (so LICQ holds); active inequalities have multipliers in [0.5, 2], inactive ones a
    slack in [0.5, 2]. Needs m_ineq + m_eq <= n.
    """
    assert m_ineq + m_eq <= n
    gen = torch.Generator().manual_seed(seed)
    u = _orthogonal(gen, n)
    Q = u @ torch.diag(_uniform(gen, n, 1.0, 3.0)) @ u.T
    Q = 0.5 * (Q + Q.T)
    m = m_ineq + m_eq
    left, right = _orthogonal(gen, max(m, 1)), _orthogonal(gen, n)
    M = left[:m, :m] @ torch.diag(_uniform(gen, m, 1.0, 2.0)) @ right[:m, :]
    A, E = M[:m_ineq], M[m_ineq:]
    x_star = torch.randn(n, generator=gen, dtype=torch.float64)
    active = torch.rand(m_ineq, generator=gen) < 0.5
    lam = torch.where(active, _uniform(gen, m_ineq, 0.5, 2.0), torch.zeros(m_ineq, dtype=Q.dtype))
    slack = torch.where(active, torch.zeros(m_ineq, dtype=Q.dtype), _uniform(gen, m_ineq, 0.5, 2))
    mu = torch.randn(m_eq, generator=gen, dtype=torch.float64)
    c = -(Q @ x_star + A.T @ lam + E.T @ mu)
    return QPData(Q, c, A, A @ x_star + slack, E, E @ x_star, x_star, lam, mu)


def slsqp_solution(qp: QPData) -> np.ndarray:
    """The reference solution of scipy's SLSQP (scipy's convention: inequalities are >= 0)."""
    Q, c = qp.Q.numpy(), qp.c.numpy()
    A, b, E, d = qp.A.numpy(), qp.b.numpy(), qp.E.numpy(), qp.d.numpy()
    constraints = []
    if A.shape[0]:
        constraints.append({"type": "ineq", "fun": lambda x: b - A @ x, "jac": lambda x: -A})
    if E.shape[0]:
        constraints.append({"type": "eq", "fun": lambda x: E @ x - d, "jac": lambda x: E})
    result = scipy.optimize.minimize(
        lambda x: 0.5 * x @ Q @ x + c @ x,
        np.zeros(qp.n),
        jac=lambda x: Q @ x + c,
        method="SLSQP",
        constraints=constraints,
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert result.success, result.message
    return result.x


def kkt_solution(qp: QPData) -> tuple[torch.Tensor, torch.Tensor]:
    """The solution of an equality-constrained QP from its KKT linear system."""
    n, m = qp.n, qp.E.shape[0]
    kkt = torch.zeros(n + m, n + m, dtype=torch.float64)
    kkt[:n, :n], kkt[:n, n:], kkt[n:, :n] = qp.Q, qp.E.T, qp.E
    solution = torch.linalg.solve(kkt, torch.cat([-qp.c, qp.d]))
    return solution[:n], solution[n:]


class QP(conopt.ConstrainedProblem):
    """A QP as a conopt problem: one vector constraint per kind, or one per row (``split``).

    Inequalities are named ``"ineq"`` (or ``"ineq.0"``, ``"ineq.1"``, ... when split), equalities
    ``"eq"`` (or ``"eq.0"``, ...).
    """

    def __init__(
        self,
        data: QPData,
        *,
        split: bool = False,
        formulation: FormulationFactory | None = None,
        ineq_init: float = 0.0,
        eq_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.data = data
        self.split = split

        def make(kind, shape, init):
            form = None if formulation is None else formulation()
            with_multiplier = form is None or form.uses_multiplier
            multiplier = conopt.DenseMultiplier(init=init) if with_multiplier else None
            return conopt.Constraint(kind, shape, formulation=form, multiplier=multiplier)

        m_ineq, m_eq = data.A.shape[0], data.E.shape[0]
        self.ineq = self.eq = None
        if split:
            if m_ineq:
                self.ineq = nn.ModuleList([make("<=", (), ineq_init) for _ in range(m_ineq)])
            if m_eq:
                self.eq = nn.ModuleList([make("==", (), eq_init) for _ in range(m_eq)])
        else:
            if m_ineq:
                self.ineq = make("<=", m_ineq, ineq_init)
            if m_eq:
                self.eq = make("==", m_eq, eq_init)

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        constraints = {}
        for module, value in ((self.ineq, self.data.g(x)), (self.eq, self.data.h(x))):
            if module is None:
                continue
            if self.split:
                constraints.update(zip(module, value.unbind(), strict=True))
            else:
                constraints[module] = value
        return conopt.ProblemState(loss=self.data.f(x), constraints=constraints)

    def set_multipliers(self, kind: str, values: torch.Tensor) -> None:
        """Set the multipliers of one kind (``"<="`` or ``"=="``) from one vector."""
        module = self.ineq if kind == "<=" else self.eq
        if module is None:
            return
        constraints = list(module) if self.split else [module]
        with torch.no_grad():
            for constraint, value in zip(
                constraints, values.reshape(len(constraints), -1), strict=True
            ):
                weight = constraint.multiplier.weight
                weight.copy_(value.reshape(weight.shape))

    def multipliers(self, kind: str) -> torch.Tensor:
        """The current multipliers of one kind (``"<="`` or ``"=="``) as one vector."""
        module = self.ineq if kind == "<=" else self.eq
        if module is None:
            return torch.zeros(0, dtype=torch.float64)
        if self.split:
            return torch.stack([c.multiplier.weight.detach() for c in module]).clone()
        return module.multiplier.weight.detach().clone()


# Linear: a 3-variable quadratic with two linear inequalities, for the optimizer tests.
A = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]], dtype=torch.float64)
B = torch.tensor([0.5, -0.5], dtype=torch.float64)
T = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
X0 = torch.tensor([0.2, 0.4, -0.3], dtype=torch.float64)
LAM0 = torch.tensor([0.3, 0.05], dtype=torch.float64)
LR, DUAL_LR = 0.1, 0.5


class Linear(conopt.ConstrainedProblem):
    """f(x) = ½‖x − T‖², g(x) = A x − B ≤ 0: one vector constraint or one per row."""

    def __init__(self, split=False, kind="<=", init=LAM0):
        super().__init__()
        self.split = split
        if split:
            self.rows = nn.ModuleList(
                [conopt.Constraint(kind, multiplier=conopt.DenseMultiplier(init=v)) for v in init]
            )
        else:
            self.g = conopt.Constraint(kind, 2, multiplier=conopt.DenseMultiplier(init=init))

    def evaluate(self, x):
        g = A @ x - B
        constraints = dict(zip(self.rows, g.unbind(), strict=True)) if self.split else {self.g: g}
        return conopt.ProblemState(loss=0.5 * ((x - T) ** 2).sum(), constraints=constraints)

    def lam(self):
        if self.split:
            return torch.stack([c.multiplier.weight.detach() for c in self.rows])
        return self.g.multiplier.weight.detach().clone()


def linear_grad(x, lam):
    """Gradient in ``x`` of :class:`Linear`'s Lagrangian ``f + λᵀg``: ``x − T + Aᵀλ``."""
    return x - T + A.T @ lam


def snapshot(*objects) -> list:
    """Deep copies of tensors, modules' state dicts and optimizers' state dicts, to compare."""
    copies = []
    for obj in objects:
        if isinstance(obj, torch.Tensor):
            copies.append(obj.detach().clone())
        elif hasattr(obj, "state_dict"):
            copies.append(copy.deepcopy(obj.state_dict()))
        else:
            copies.append(copy.deepcopy(obj))
    return copies


def assert_same(a, b) -> None:
    """Bit-for-bit equality of nested containers of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (a.keys(), b.keys())
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b, (a, b)


def sgd_gda(
    problem: conopt.ConstrainedProblem, x: torch.Tensor, lr: float = 0.1, **kwargs
) -> conopt.optim.SimultaneousGDA:
    """SGD descent on ``x`` (step ``lr``) and SGD ascent on the multipliers (step 0.1)."""
    return conopt.optim.SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=lr),
        torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        **kwargs,
    )
