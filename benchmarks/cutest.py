"""Benchmark conopt against SciPy (SLSQP, trust-constr) on CUTEst problems from S2MPJ.

Usage::

    python benchmarks/cutest.py [--problems HS71,HS35] [--solvers conopt,slsqp,trust-constr]
                                [--csv out.csv] [--json out.json] [--timeout-per-problem S]
                                [--corrected-f-star] [--conopt-kwargs '{"max_iter": 500}']

Every solver starts from the problem's ``x0`` with its variable bounds, in the same run. The
problems are loaded by :mod:`benchmarks.s2mpj_problems` (default: the Hock–Schittkowski set of
:func:`~benchmarks.s2mpj_problems.default_problem_names`), and every run is judged by the same
numpy evaluations at the returned point: a run is *solved* when
``|f - f*| <= 1e-4 * max(1, |f*|)`` and the maximum violation
``max(|h|, [g]+, [lb - x]+, [x - ub]+) <= 1e-6``.

SciPy gets S2MPJ's analytic gradient and constraint Jacobians, the equalities and inequalities as
``NonlinearConstraint`` objects and the bounds as ``Bounds``; trust-constr uses BFGS Hessian
approximations (first-order information only, like SLSQP and conopt). conopt is called as
``conopt.solve(problem, x0, lower=lb, upper=ub)``; when ``conopt.solve`` cannot be imported the
solver is reported as unavailable.

``f*`` is the problem's ``LO SOLTN`` value; a dozen of them are known to be wrong (see
:data:`~benchmarks.s2mpj_problems.REFERENCE_CORRECTIONS`): their rows are marked
``[LO SOLTN suspect]``, and ``--corrected-f-star`` judges them against the corrected values.

The timeout applies to each solver on each problem: the next function evaluation after it raises,
and the run is reported as ``timeout``. Exceptions are caught per problem and solver. After the
summary lines, every unsolved run is listed with its reason (the table of
:mod:`benchmarks.cutest_report`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    from benchmarks import s2mpj_problems as sp
except ModuleNotFoundError:  # Run as ``python benchmarks/cutest.py``: add the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import s2mpj_problems as sp
from benchmarks.cutest_report import (
    format_header,
    format_row,
    format_summary,
    format_time,
    format_unsolved,
    summarize,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SOLVERS: tuple[str, ...] = ("conopt", "slsqp", "trust-constr")
"""The solvers the harness knows, in display order."""

F_RTOL = 1e-4
"""Objective tolerance: ``|f - f*| <= F_RTOL * max(1, |f*|)``."""

VIOLATION_TOL = 1e-6
"""Feasibility tolerance on the maximum violation."""

SLSQP_OPTIONS: dict[str, Any] = {"maxiter": 500, "ftol": 1e-10}
TRUST_CONSTR_OPTIONS: dict[str, Any] = {"maxiter": 2000, "gtol": 1e-8, "xtol": 1e-10}

WARMUP_PROBLEM = "HS71"
"""Solved once by every solver, untimed, before the benchmark (first-call costs)."""


@dataclass
class SolverRun:
    """The outcome of one solver on one problem.

    Attributes:
        problem: The problem name.
        solver: The solver name.
        f: The objective at the returned point (nan when none).
        max_violation: The maximum constraint and bound violation there (inf when none).
        nit: Iterations reported by the solver (-1 when unknown).
        nfev: Objective evaluations (value or value+gradient calls to S2MPJ).
        time_s: Wall time of the solver call, in seconds.
        cpu_s: CPU time of this process during the call, in seconds (robust to other load on a
            shared machine: every solver runs on one thread).
        solved: Whether the run meets the accuracy criteria.
        reason: Why it is not solved (empty when solved).
        message: The solver's own status message, or the error text.
        iteration_limit: Whether the solver stopped at its iteration (or evaluation) limit.
        stop: The solver's own short reason for stopping unconverged (conopt only), e.g.
            ``"penalty limit"``; empty otherwise.
        error: The exception text when the run crashed (None otherwise).
        x: The returned point (None when none).
    """

    problem: str
    solver: str
    f: float = math.nan
    max_violation: float = math.inf
    nit: int = -1
    nfev: int = 0
    time_s: float = math.nan
    cpu_s: float = math.nan
    solved: bool = False
    reason: str = ""
    message: str = ""
    iteration_limit: bool = False
    stop: str = ""
    error: str | None = None
    x: list[float] | None = None


def conopt_available() -> bool:
    """Whether ``conopt.solve`` can be imported."""
    try:
        import conopt
    except Exception:
        return False
    return hasattr(conopt, "solve")


# --------------------------------------------------------------------------------------------
# Solvers. Each returns an _Outcome.
# --------------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What a solver function returns: the point, iterations, message and why it stopped."""

    x: np.ndarray
    nit: int
    message: str
    iteration_limit: bool
    stop: str = ""


CONOPT_STOP_REASONS: dict[int, str] = {
    2: "penalty limit",
    3: "infeasible start (f or c not finite at x0)",
    4: "stalled at the rounding limit",
}
"""Short reasons for the ``status`` codes of an unconverged ``conopt.solve`` (the outer
iteration limit, 1, and the evaluation limit, 5, are reported as ``iteration limit``)."""


def _scipy_setup(problem: sp.S2MPJProblem) -> tuple[Any, list[Any]]:
    from scipy.optimize import Bounds, NonlinearConstraint

    bounds = Bounds(problem.lb, problem.ub)
    constraints: list[Any] = []
    if problem.m_eq:
        constraints.append(
            NonlinearConstraint(problem.equalities, 0.0, 0.0, jac=problem.equalities_jacobian)
        )
    if problem.m_in:
        constraints.append(
            NonlinearConstraint(
                problem.inequalities, -np.inf, 0.0, jac=problem.inequalities_jacobian
            )
        )
    return bounds, constraints


def _solve_slsqp(problem: sp.S2MPJProblem, options: dict[str, Any]) -> _Outcome:
    from scipy.optimize import minimize

    bounds, constraints = _scipy_setup(problem)
    result = minimize(
        problem.objective,
        problem.x0.copy(),
        jac=problem.gradient,
        method="SLSQP",
        bounds=bounds,
        constraints=constraints,
        options={**SLSQP_OPTIONS, **options},
    )
    limit = int(result.status) == 9
    return _Outcome(np.asarray(result.x), int(result.nit), str(result.message), limit)


def _solve_trust_constr(problem: sp.S2MPJProblem, options: dict[str, Any]) -> _Outcome:
    from scipy.optimize import BFGS, minimize

    bounds, constraints = _scipy_setup(problem)
    result = minimize(
        problem.objective,
        problem.x0.copy(),
        jac=problem.gradient,
        hess=BFGS(),
        method="trust-constr",
        bounds=bounds,
        constraints=constraints,
        options={**TRUST_CONSTR_OPTIONS, **options},
    )
    limit = int(result.status) == 0
    return _Outcome(np.asarray(result.x), int(result.nit), str(result.message), limit)


def _solve_conopt(problem: sp.S2MPJProblem, options: dict[str, Any]) -> _Outcome:
    import conopt

    conopt_problem, x0, lower, upper = sp.to_conopt(problem)
    result = conopt.solve(conopt_problem, x0, lower=lower, upper=upper, **options)
    x = result.x.detach().to("cpu").double().numpy().reshape(-1)
    status = int(result.status)
    limit = status in (1, 5)  # outer iteration limit, evaluation limit
    stop = CONOPT_STOP_REASONS.get(status, "")
    return _Outcome(x, int(result.nit), str(result.message), limit, stop)


_SOLVER_FUNCTIONS: dict[str, Callable[[sp.S2MPJProblem, dict[str, Any]], _Outcome]] = {
    "conopt": _solve_conopt,
    "slsqp": _solve_slsqp,
    "trust-constr": _solve_trust_constr,
}


# --------------------------------------------------------------------------------------------
# Judging.
# --------------------------------------------------------------------------------------------


def assess(problem: sp.S2MPJProblem, run: SolverRun) -> SolverRun:
    """Fill ``run.solved`` and ``run.reason`` from ``run.f`` and ``run.max_violation``.

    Reasons: ``error: ...``, ``timeout``, ``no f*``, ``iteration limit``, ``infeasible``,
    ``local minimum`` (feasible but ``f > f*``), ``f < f*`` (feasible and below the reference:
    a suspicious reference or a loose tolerance), then the solver's own reason for stopping
    (:data:`CONOPT_STOP_REASONS`), ``non-smooth`` when the classification says so, and the
    problem's known difficulty (:data:`~benchmarks.s2mpj_problems.PROBLEM_NOTES`).
    """
    if run.error is not None:
        run.solved, run.reason = False, run.error
        return run
    f_star = problem.f_star
    feasible = run.max_violation <= VIOLATION_TOL
    close = (
        f_star is not None
        and math.isfinite(run.f)
        and abs(run.f - f_star) <= F_RTOL * max(1.0, abs(f_star))
    )
    run.solved = bool(close and feasible)
    if run.solved:
        run.reason = ""
        return run
    reasons: list[str] = []
    if run.iteration_limit:
        reasons.append("iteration limit")
    if not math.isfinite(run.f):
        reasons.append("f not finite")
    elif not feasible:
        reasons.append(f"infeasible ({run.max_violation:.1e})")
    elif f_star is None:
        reasons.append("no f*")
    elif run.f > f_star:
        reasons.append("local minimum (f > f*)")
    else:
        reasons.append("f < f* (reference suspect?)")
    if run.stop:
        reasons.append(run.stop)
    if problem.is_nonsmooth:
        reasons.append("non-smooth")
    note = sp.PROBLEM_NOTES.get(problem.name)
    if note:
        reasons.append(note)
    run.reason = "; ".join(reasons)
    return run


def run_solver(
    problem: sp.S2MPJProblem,
    solver: str,
    timeout: float | None = None,
    options: dict[str, Any] | None = None,
) -> SolverRun:
    """Run ``solver`` on ``problem`` from ``problem.x0`` and judge the result.

    Never raises for a solver failure: exceptions (and timeouts) become the run's ``reason``.

    Args:
        problem: The problem (its counters and cache are reset first).
        solver: One of :data:`SOLVERS`.
        timeout: Seconds allowed; evaluations raise after it (None: no limit).
        options: Extra solver options (SciPy ``options`` or ``conopt.solve`` keyword arguments).
    """
    run = SolverRun(problem=problem.name, solver=solver)
    if solver not in _SOLVER_FUNCTIONS:
        run.error = f"error: unknown solver {solver!r}"
        return assess(problem, run)
    if solver == "conopt" and not conopt_available():
        run.error = "unavailable (conopt.solve not importable)"
        return assess(problem, run)
    problem.reset_counters()
    start, cpu_start = time.perf_counter(), time.process_time()
    problem.deadline = None if timeout is None else start + timeout
    x: np.ndarray | None = None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outcome = _SOLVER_FUNCTIONS[solver](problem, dict(options or {}))
            x, run.nit, run.message = outcome.x, outcome.nit, outcome.message
            run.iteration_limit, run.stop = outcome.iteration_limit, outcome.stop
    except Exception as exc:
        timed_out = isinstance(exc, sp.EvaluationTimeout) or (
            problem.deadline is not None and time.perf_counter() > problem.deadline
        )
        text = " ".join(str(exc).split())
        run.message = f"{type(exc).__name__}: {text}"
        run.error = "timeout" if timed_out else f"error: {run.message[:80]}"
    finally:
        run.time_s = time.perf_counter() - start
        run.cpu_s = time.process_time() - cpu_start
        problem.deadline = None
    run.nfev = problem.nfev + problem.ngev
    if x is not None:
        run.x = [float(v) for v in x]
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                run.f = problem.objective(x)
                run.max_violation = problem.max_violation(x)
        except Exception as exc:  # e.g. the point left the objective's domain.
            run.f, run.max_violation = math.nan, math.inf
            run.message += f" [evaluation at the result failed: {type(exc).__name__}]"
    return assess(problem, run)


def run_benchmark(
    names: Sequence[str],
    solvers: Sequence[str],
    timeout: float | None = None,
    conopt_kwargs: dict[str, Any] | None = None,
    out: Any = None,
    progress: Any = None,
    warmup: bool = True,
    corrected_f_star: bool = False,
) -> tuple[list[dict[str, Any]], list[SolverRun]]:
    """Run every solver on every problem, printing the table to ``out`` as it goes.

    Args:
        names: Problem names.
        solvers: Solver names (see :data:`SOLVERS`).
        timeout: Seconds per solver and problem (None: no limit).
        conopt_kwargs: Extra keyword arguments for ``conopt.solve``.
        out: Stream for the table (None: silent).
        progress: Stream for progress messages (None: silent).
        warmup: First run every solver once on :data:`WARMUP_PROBLEM`, untimed, so that
            first-call costs (imports, caches) do not land on the first problem.
        corrected_f_star: Judge against the corrected references of
            :data:`~benchmarks.s2mpj_problems.REFERENCE_CORRECTIONS` instead of ``LO SOLTN``.

    Returns:
        ``(problems, runs)``: one metadata dict per problem, and every :class:`SolverRun`.
    """
    problems: list[dict[str, Any]] = []
    runs: list[SolverRun] = []
    if warmup:
        warm = sp.load_problem(WARMUP_PROBLEM)
        for solver in solvers:
            run_solver(
                warm, solver, timeout=timeout, options=conopt_kwargs if solver == "conopt" else None
            )
    if out is not None:
        print(format_header(solvers), file=out, flush=True)
    for index, name in enumerate(names, start=1):
        if progress is not None:
            print(f"[{index}/{len(names)}] {name}", end="", file=progress, flush=True)
        try:
            problem = sp.load_problem(name, corrected_f_star=corrected_f_star)
        except Exception as exc:
            message = f"load error: {type(exc).__name__}: {exc}"[:120]
            problems.append({"name": name, "error": message})
            runs += [SolverRun(name, s, error=message, reason=message) for s in solvers]
            if progress is not None:
                print(f" {message}", file=progress, flush=True)
            if out is not None:
                print(f"{name:<9} {message}", file=out, flush=True)
            continue
        problems.append(
            {
                "name": name,
                "n": problem.n,
                "m_eq": problem.m_eq,
                "m_in": problem.m_in,
                "f_star": problem.f_star,
                "f_star_lo_soltn": problem.f_star_lo_soltn,
                "f_star_note": problem.f_star_note,
                "classification": problem.classification,
            }
        )
        row: list[SolverRun] = []
        for solver in solvers:
            if progress is not None:
                print(f" {solver}", end="", file=progress, flush=True)
            options = conopt_kwargs if solver == "conopt" else None
            run = run_solver(problem, solver, timeout=timeout, options=options)
            if progress is not None:
                print(
                    f"({'ok' if run.solved else 'x'} {format_time(run.time_s)})",
                    end="",
                    file=progress,
                    flush=True,
                )
            row.append(run)
        if progress is not None:
            print(file=progress, flush=True)
        runs += row
        if out is not None:
            print(format_row(problem, row), file=out, flush=True)
    return problems, runs


_CSV_FIELDS = (
    "problem",
    "solver",
    "solved",
    "f",
    "max_violation",
    "nit",
    "nfev",
    "time_s",
    "cpu_s",
    "reason",
    "message",
    "iteration_limit",
    "error",
)


def write_csv(path: str, problems: Sequence[dict[str, Any]], runs: Sequence[SolverRun]) -> None:
    """Write one CSV row per (problem, solver), with the problem's size and ``f*``."""
    meta = {p["name"]: p for p in problems}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["problem", "n", "m_eq", "m_in", "f_star", *_CSV_FIELDS[1:]])
        for run in runs:
            p = meta.get(run.problem, {})
            record = asdict(run)
            writer.writerow(
                [run.problem, p.get("n"), p.get("m_eq"), p.get("m_in"), p.get("f_star")]
                + [record[k] for k in _CSV_FIELDS[1:]]
            )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", help="comma-separated names (default: the HS set)")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated solvers")
    parser.add_argument("--csv", help="write one row per problem and solver to this CSV file")
    parser.add_argument("--json", help="write problems, runs and summary to this JSON file")
    parser.add_argument(
        "--timeout-per-problem",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds per solver and problem (default 120; 0 for no limit)",
    )
    parser.add_argument(
        "--corrected-f-star",
        action="store_true",
        help="judge against REFERENCE_CORRECTIONS where LO SOLTN is known to be wrong",
    )
    parser.add_argument(
        "--conopt-kwargs", default="{}", help="JSON object of extra conopt.solve arguments"
    )
    args = parser.parse_args(argv)

    names = (
        [n.strip() for n in args.problems.split(",") if n.strip()]
        if args.problems
        else list(sp.default_problem_names())
    )
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"unknown solver(s) {unknown}; choose from {list(SOLVERS)}")
    conopt_kwargs = json.loads(args.conopt_kwargs)
    timeout = args.timeout_per_problem if args.timeout_per_problem > 0 else None

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency of the loader.
        pass
    if "conopt" in solvers and not conopt_available():
        print("note: conopt.solve is not importable; conopt is marked unavailable", file=sys.stderr)

    problems, runs = run_benchmark(
        names,
        solvers,
        timeout,
        conopt_kwargs,
        out=sys.stdout,
        progress=sys.stderr,
        corrected_f_star=args.corrected_f_star,
    )
    summary = summarize(runs, solvers)
    print()
    for line in format_summary(summary):
        print(line)
    unsolved = format_unsolved(runs, solvers)
    if unsolved:
        print()
        print("\n".join(unsolved))
    if args.csv:
        write_csv(args.csv, problems, runs)
    if args.json:
        payload = {
            "criteria": {"f_rtol": F_RTOL, "violation_tol": VIOLATION_TOL},
            "corrected_f_star": args.corrected_f_star,
            "timeout_per_problem_s": timeout,
            "problems": problems,
            "runs": [asdict(run) for run in runs],
            "summary": summary,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(_json_safe(payload), handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
