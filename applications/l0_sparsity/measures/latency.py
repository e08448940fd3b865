r"""A latency model: the purged model's expected latency on a device, fitted from measurements.

For every layer a purge can shrink, :class:`LatencyModel` times a plain ``nn.Conv2d`` /
``nn.Linear`` of that layer's kind, kernel and input size on the target device at a grid of kept
fractions of its outputs and inputs (:math:`r, c \in \{0.25, 0.5, 0.75, 1\}` by default; warmup,
several repeats, median) and fits

.. math::

    t_\ell(r, c) = a_\ell + b_\ell\, r + c_\ell\, c + d_\ell\, r c, \qquad a, b, c, d \ge 0.

The rest of the model (ungated layers, activations, norms, the scatters a purge inserts) is
calibrated on whole purged models at a few keep levels:
:math:`T = t_0 + g \sum_\ell t_\ell`. The widths are those of
:class:`~l0_sparsity.measures.ComputeCost` (the same width rules; rows and columns depend on
different gates), so with independent gates

.. math::

    E[T] = t_0 + g \sum_\ell \big(a_\ell + b_\ell E[r_\ell] + c_\ell E[c_\ell]
    + d_\ell E[r_\ell] E[c_\ell]\big)

is exact for the fitted model and differentiable in the keep probabilities; it increases with
each of them. A model is measured once per (model structure, device, input shape, dtype,
threads) and cached as JSON on disk (:func:`default_cache_dir`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from l0_sparsity.measures.cost_terms import build_terms
from l0_sparsity.measures.latency_layers import (
    LayerProbe,
    cache_key,
    default_cache_dir,
    fit_calibration,
    probe_layers,
    threads_set,
)
from l0_sparsity.measures.timing import fit_bilinear, median_seconds, module_seconds

__all__ = ["LatencyModel", "LatencyRow", "default_cache_dir"]


@dataclass(frozen=True)
class LatencyRow:
    """A purged model's latency, predicted against measured (a row of an accuracy table).

    :meth:`~l0_sparsity.measures.latency.LatencyModel.accuracy` returns one per keep level.

    Attributes:
        keep: Fraction of each layer's gates kept (a random pattern).
        predicted: Predicted latency as a fraction of the predicted dense latency.
        measured: Measured latency as a fraction of the measured dense latency (same run).
        relative_error: ``predicted / measured - 1``.
    """

    keep: float
    predicted: float
    measured: float
    relative_error: float


class LatencyModel:
    """Expected latency of the model that a purge makes, fitted on the target device.

    Args:
        model: A gated model (see :func:`l0_sparsity.sparsify`); its live ``log α`` are read.
        example_input: An input batch or its shape; the latency is that of one forward pass
            at this batch size.
        purge: The purge (:func:`l0_sparsity.purge`), used to calibrate on whole purged models
            and to measure them (passed in: measures come before purging in the package).
        device: Where to measure (default: the model's device).
        dtype: Floating dtype of the timed modules (default: the model's).
        threads: CPU threads while measuring (``torch.set_num_threads``; restored after).
        cache_dir: Directory of the cache (default :func:`default_cache_dir`); ``None`` and
            ``use_cache=False`` measure every time.
        use_cache: Read and write the cache.
        fractions: Kept fractions of a layer's outputs and inputs to time (a grid).
        calibration: Keep levels of the whole purged models the rest is calibrated on.
        warmup: Untimed calls before each timing.
        repeats: Timed calls; their median counts.
        progress: Print a progress line (stderr) while measuring.

    Attributes:
        cache_key: Hex digest naming this measurement.
        cache_path: Its JSON file (``None`` without a cache).
        from_cache: Whether the fit was read from the cache.
        dense_seconds: Measured latency of the purge with every gate kept.
        dense_predicted: Predicted latency with every gate kept (seconds).
        fixed_predicted: Predicted latency with every gate dead: the floor of any latency budget.

    Raises:
        ValueError: For a structure :class:`~l0_sparsity.measures.ComputeCost` refuses.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Tensor | Sequence[int],
        *,
        purge: Callable[[nn.Module], nn.Module],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        threads: int = 1,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        calibration: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
        warmup: int = 3,
        repeats: int = 15,
        progress: bool = True,
    ) -> None:
        ref = next(iter(model.parameters()))
        self.device = torch.device(device) if device is not None else ref.device
        self.dtype = dtype or ref.dtype
        shape = tuple(example_input.shape if isinstance(example_input, Tensor) else example_input)
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.threads = threads
        self._model, self._purge = model, purge
        self._timing = {"warmup": warmup, "repeats": repeats}
        self._progress = progress
        self._counts = build_terms(model, self.input_shape).counts
        self._probes: list[LayerProbe] = probe_layers(model, self.input_shape, self._counts)
        self.cache_key = cache_key(
            model, self._probes, self.input_shape, self.dtype, self.device, threads,
            {"fractions": list(fractions), "calibration": list(calibration), **self._timing},
        )  # fmt: skip
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = folder / f"{self.cache_key[:24]}.json" if use_cache else None
        fit = self._read_cache()
        self.from_cache = fit is not None
        if fit is None:
            fit = self._measure(tuple(fractions), tuple(calibration))
            self._write_cache(fit)
        self._coef = torch.tensor(fit["layers"], dtype=torch.float64).reshape(-1, 4)
        self.offset, self.gain = float(fit["offset"]), float(fit["gain"])
        self.dense_seconds = float(fit["dense_seconds"])
        self._tensors: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}
        self.dense_predicted = self._at_pattern(torch.ones(self._num_gates, dtype=torch.float64))
        self.fixed_predicted = self._at_pattern(torch.zeros(self._num_gates, dtype=torch.float64))
        self._dense_module: nn.Module | None = None

    @property
    def floor(self) -> float:
        """The predicted latency with every gate dead, as a fraction of the dense prediction."""
        return self.fixed_predicted / self.dense_predicted

    def check_target(self, target: float) -> None:
        """Refuse a latency budget below the floor (every gate dead).

        Args:
            target: A budget, as a fraction of the dense model's latency.

        Raises:
            ValueError: If ``target`` is below the floor; the message gives the floor.
        """
        if target < self.floor:
            shown = math.ceil(self.floor * 1e4) / 1e4
            raise ValueError(
                f"latency_target {target:g} is below the floor {shown:.4f} of the ungated layers "
                "(with every gate dead the purged model is predicted to take "
                f"{self.fixed_predicted * 1e3:.4g} ms of the dense model's "
                f"{self.dense_predicted * 1e3:.4g} ms at input shape {self.input_shape}); "
                f"give a latency_target of at least {shown:.4f}."
            )

    @property
    def _num_gates(self) -> int:
        return sum(layer.num_gates for layer in self._counts.layers)

    def expected(self) -> Tensor:
        """Expected latency of the purged model in seconds: a differentiable scalar."""
        p, logq = self._counts.keep_probabilities()
        if p.dtype not in (torch.float32, torch.float64):
            p, logq = p.float(), logq.float()
        return self._evaluate(self._counts.counts(p, logq))

    def expected_fraction(self) -> Tensor:
        """The expected latency as a fraction of the predicted dense one (what a budget bounds)."""
        return self.expected() / self.dense_predicted

    def test_fraction(self) -> float:
        """Predicted latency at the test-time gates, as a fraction of the predicted dense one."""
        with torch.no_grad():
            return self._at_pattern(self._counts.test_pattern()[0]) / self.dense_predicted

    def measured_fraction(self, model: nn.Module | None = None) -> float:
        """Measured latency of ``model``'s purge over the dense purge's, timed interleaved.

        Args:
            model: A gated model of this structure (default: the one this model follows).

        Returns:
            The ratio of the two medians.
        """
        purged = self._purge(model if model is not None else self._model)
        purged_time, dense_time = self._time_modules([purged, self._dense()])
        return purged_time / dense_time

    def accuracy(self, keep_levels: Sequence[float], seed: int = 1) -> list[LatencyRow]:
        """Predicted against measured latency of purged models at random keep patterns.

        Args:
            keep_levels: Fraction of each layer's gates kept, one purged model each.
            seed: Seed of the random patterns.

        Returns:
            One :class:`LatencyRow` per level; all models are timed interleaved with the dense
            purge, in one run.
        """
        generator = torch.Generator().manual_seed(seed)
        patterns = [self._random_pattern(keep, generator) for keep in keep_levels]
        modules = [self._purged_at(z) for z in patterns] + [self._dense()]
        *times, dense = self._time_modules(modules)
        rows = []
        for keep, z, seconds in zip(keep_levels, patterns, times, strict=True):
            predicted = self._at_pattern(z) / self.dense_predicted
            measured = seconds / dense
            rows.append(LatencyRow(keep, predicted, measured, predicted / measured - 1))
        return rows

    def _coefficients(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (like.device, like.dtype)
        if key not in self._tensors:
            probes = self._probes
            index = [[p.rows[0] for p in probes], [p.cols[0] for p in probes]]
            scale = [[p.rows[1] for p in probes], [p.cols[1] for p in probes]]
            self._tensors[key] = (
                torch.tensor(index, dtype=torch.long, device=like.device),
                torch.tensor(scale, dtype=like.dtype, device=like.device),
                self._coef.to(device=like.device, dtype=like.dtype),
            )
        return self._tensors[key]

    def _evaluate(self, counts: Tensor) -> Tensor:
        """``t_0 + g Σ_ℓ t_ℓ(r_ℓ, c_ℓ)`` at a count vector."""
        index, scale, coef = self._coefficients(counts)
        r, c = counts[index[0]] * scale[0], counts[index[1]] * scale[1]
        per_layer = coef[:, 0] + coef[:, 1] * r + coef[:, 2] * c + coef[:, 3] * r * c
        return self.offset + self.gain * per_layer.sum()

    def _at_pattern(self, z: Tensor) -> float:
        z = z.to(torch.float64)
        return float(self._evaluate(self._counts.counts(z, torch.log1p(-z))))

    def _random_pattern(self, keep: float, generator: torch.Generator) -> Tensor:
        """Kept indicators with a fraction ``keep`` of each layer's gates (at least one)."""
        parts = []
        for layer in self._counts.layers:
            n = layer.num_gates
            kept = max(1, round(keep * n))
            z = torch.zeros(n, dtype=torch.float64)
            z[torch.randperm(n, generator=generator)[:kept]] = 1.0
            parts.append(z)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _purged_at(self, z: Tensor) -> nn.Module:
        """The purge of a copy of the model whose test-time gates are the pattern ``z``."""
        gated = copy.deepcopy(self._model)
        sizes = [layer.num_gates for layer in self._counts.layers]
        with torch.no_grad():
            for target, part in zip(self._counts.targets, z.split(sizes), strict=True):
                log_alpha = gated.get_submodule(target).log_alpha
                high = torch.full_like(log_alpha, 10.0)
                log_alpha.copy_(torch.where(part.view_as(log_alpha).bool(), high, -high))
        return self._purge(gated).to(device=self.device, dtype=self.dtype).eval()

    def _dense(self) -> nn.Module:
        if self._dense_module is None:
            self._dense_module = self._purged_at(torch.ones(self._num_gates, dtype=torch.float64))
        return self._dense_module

    def _example(self, shape: Sequence[int]) -> Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(tuple(shape), generator=generator, dtype=self.dtype).to(self.device)

    def _time_modules(self, modules: list[nn.Module]) -> list[float]:
        with threads_set(self.threads):
            return module_seconds(modules, self._example(self.input_shape), **self._timing)

    def _say(self, message: str, end: str = "") -> None:
        if self._progress:
            print(f"\rlatency model: {message}", end=end, file=sys.stderr, flush=True)

    def _measure(self, fractions: tuple[float, ...], calibration: tuple[float, ...]) -> dict:
        """Time every shrinkable layer on the grid, then calibrate on whole purged models."""
        layers: list[list[float]] = []
        with threads_set(self.threads):
            for i, probe in enumerate(self._probes):
                self._say(f"layer {i + 1}/{len(self._probes)} {probe.target} ...")
                grid = [(r, c) for r in fractions for c in fractions]
                seconds = [self._time_probe(probe, r, c) for r, c in grid]
                rows, cols = zip(*[probe.achieved(r, c) for r, c in grid], strict=True)
                layers.append(list(fit_bilinear(rows, cols, seconds)))
        self._coef = torch.tensor(layers, dtype=torch.float64).reshape(-1, 4)
        self.offset, self.gain, self._tensors = 0.0, 1.0, {}
        self._say(f"calibrating on {len(calibration)} purged models ...")
        generator = torch.Generator().manual_seed(0)
        patterns = [self._random_pattern(keep, generator) for keep in calibration]
        measured = self._time_modules([self._purged_at(z) for z in patterns])
        raw = [self._at_pattern(z) for z in patterns]
        offset, gain = fit_calibration(raw, measured)
        dense = measured[calibration.index(1.0)] if 1.0 in calibration else raw[0]
        self._say(f"done ({len(self._probes)} layers)", end="\n")
        return {"layers": layers, "offset": offset, "gain": gain, "dense_seconds": dense}

    def _time_probe(self, probe: LayerProbe, r: float, c: float) -> float:
        module, shape = probe.build(r, c)
        module = module.to(device=self.device, dtype=self.dtype).eval()
        x = self._example(shape)
        return median_seconds(lambda: module(x), device=self.device, **self._timing)

    def _read_cache(self) -> dict | None:
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        stored = json.loads(self.cache_path.read_text())
        if stored.get("key") != self.cache_key:
            return None
        return stored

    def _write_cache(self, fit: dict) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_suffix(".tmp")
        partial.write_text(json.dumps({"key": self.cache_key, **fit}, indent=1))
        partial.replace(self.cache_path)
