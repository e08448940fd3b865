"""Reporting for :mod:`benchmarks.cutest`: the results table, the summary and the unsolved runs.

One job: turn :class:`~benchmarks.cutest.SolverRun` records into text. The results table has one
row per problem (each solver's ``f``, violation, iterations, time and verdict, then the reasons
of the unsolved runs); the summary one line per solver (solved count, median time, median time
ratio against SLSQP measured in the same run); the unsolved table one line per unsolved run with
its reason (the solver's own stopping reason and the problem's known difficulty included).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from benchmarks import s2mpj_problems as sp
    from benchmarks.cutest import SolverRun

__all__ = [
    "format_header",
    "format_row",
    "format_summary",
    "format_time",
    "format_unsolved",
    "summarize",
]


def format_time(seconds: float) -> str:
    """A duration as milliseconds below one second, else seconds (``-`` when not finite)."""
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1e3:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _fmt_f(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.8g}"


_SOLVER_WIDTH = 44
_SHORT = {"conopt": "conopt", "slsqp": "slsqp", "trust-constr": "tc"}


def format_header(solvers: Sequence[str]) -> str:
    """The two header lines of the results table."""
    left = f"{'problem':<9} {'n':>3} {'meq/min':>7} {'f*':>15}"
    top = " " * len(left) + "".join(f" | {s:<{_SOLVER_WIDTH - 3}}" for s in solvers)
    cols = "".join(f" | {'f':>14} {'viol':>7} {'it':>5} {'time':>8} {'ok':>3}" for _ in solvers)
    return f"{top}\n{left}{cols} | notes"


def format_row(problem: sp.S2MPJProblem, runs: Sequence[SolverRun]) -> str:
    """One table row: the problem, then f, violation, iterations, time, solved per solver."""
    m = f"{problem.m_eq}/{problem.m_in}"
    text = f"{problem.name:<9} {problem.n:>3} {m:>7} {_fmt_f(problem.f_star):>15}"
    notes = []
    for run in runs:
        viol = f"{run.max_violation:.0e}" if math.isfinite(run.max_violation) else "-"
        it = str(run.nit) if run.nit >= 0 else "-"
        ok = "yes" if run.solved else "no"
        text += f" | {_fmt_f(run.f):>14} {viol:>7} {it:>5} {format_time(run.time_s):>8} {ok:>3}"
        if not run.solved:
            notes.append(f"{_SHORT.get(run.solver, run.solver)}: {run.reason}")
    if problem.f_star_note and problem.f_star == problem.f_star_lo_soltn:
        notes.insert(0, "[LO SOLTN suspect]")
    return text + " | " + "; ".join(notes)


def summarize(runs: Iterable[SolverRun], solvers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per solver: solved count, total, median wall time, median time ratio vs SLSQP.

    Times are over runs that finished without an error; the ratios are medians over problems
    where both the solver and SLSQP finished without an error, of wall time and of CPU time.
    """
    by_solver: dict[str, dict[str, SolverRun]] = {s: {} for s in solvers}
    for run in runs:
        by_solver.setdefault(run.solver, {})[run.problem] = run
    slsqp = by_solver.get("slsqp", {})
    summary: dict[str, dict[str, Any]] = {}
    for solver in solvers:
        mine = by_solver.get(solver, {})
        finished = [r for r in mine.values() if r.error is None]
        both = [
            (r, slsqp[name])
            for name, r in mine.items()
            if r.error is None and name in slsqp and slsqp[name].error is None
        ]
        ratios = [r.time_s / s.time_s for r, s in both if s.time_s > 0]
        cpu_ratios = [r.cpu_s / s.cpu_s for r, s in both if s.cpu_s > 0]
        summary[solver] = {
            "solved": sum(r.solved for r in mine.values()),
            "total": len(mine),
            "errors": len(mine) - len(finished),
            "median_time_s": statistics.median(r.time_s for r in finished) if finished else None,
            "median_ratio_vs_slsqp": statistics.median(ratios) if ratios else None,
            "median_cpu_ratio_vs_slsqp": statistics.median(cpu_ratios) if cpu_ratios else None,
        }
    return summary


def format_summary(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per solver: solved/total, median time, median wall and CPU ratios vs SLSQP."""
    lines = []
    for solver, s in summary.items():
        t = s["median_time_s"]
        r, c = s["median_ratio_vs_slsqp"], s.get("median_cpu_ratio_vs_slsqp")
        lines.append(
            f"{solver:<13} solved {s['solved']:>3}/{s['total']:<3}  "
            f"median time {format_time(t) if t is not None else '-':>8}  "
            f"median time ratio vs slsqp {f'{r:.2f}' if r is not None else '-':>6}  "
            f"(cpu {f'{c:.2f}' if c is not None else '-'})"
            + (f"  ({s['errors']} errors/timeouts/unavailable)" if s["errors"] else "")
        )
    return lines


def format_unsolved(runs: Iterable[SolverRun], solvers: Sequence[str]) -> list[str]:
    """The unsolved runs, one line each (solver, problem, time, reason), grouped by solver.

    Within a solver the runs keep their order (the problems' order in the benchmark). Every
    unsolved run is listed with the reason :func:`~benchmarks.cutest.assess` gave it,
    so that each failure of the table is accounted for.
    """
    mine = [run for run in runs if not run.solved and run.solver in solvers]
    if not mine:
        return []
    lines = [f"unsolved ({len(mine)}):", f"{'solver':<13} {'problem':<9} {'time':>8}  reason"]
    for run in sorted(mine, key=lambda r: solvers.index(r.solver)):  # stable: problem order
        time_text = format_time(run.time_s)
        lines.append(f"{run.solver:<13} {run.problem:<9} {time_text:>8}  {run.reason or '-'}")
    return lines
