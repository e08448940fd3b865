"""Old import paths of the flat layout (0.1): they keep working for one release, with a warning.

``import l0_sparsity.presets`` still gives the module now at
:mod:`l0_sparsity.training.presets` (the same module object) and warns with a
:class:`DeprecationWarning` naming the new path. ``l0_sparsity.layers``, whose contents now live in
two places, gives a module holding the public names of :mod:`l0_sparsity.nn` and
:mod:`l0_sparsity.measures`, so old imports and pickles that name ``l0_sparsity.layers.L0Linear``
still resolve. ``l0_sparsity.purge`` and ``l0_sparsity.train``
are now the functions :func:`l0_sparsity.purge` and :func:`l0_sparsity.train`; importing them as
modules fails with a message naming the new module, instead of a module silently replacing the
function.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

MOVED: dict[str, str | tuple[str, ...]] = {
    "l0_sparsity.gates": "l0_sparsity.nn.gates",
    "l0_sparsity.gate_set": "l0_sparsity.nn.gate_set",
    "l0_sparsity.layers": ("l0_sparsity.nn", "l0_sparsity.measures"),
    "l0_sparsity.calibration": "l0_sparsity.training.calibration",
    "l0_sparsity.checkpoint": "l0_sparsity.training.checkpoint",
    "l0_sparsity.distributed": "l0_sparsity.training.distributed",
    "l0_sparsity.metrics": "l0_sparsity.training.metrics",
    "l0_sparsity.precision": "l0_sparsity.training.precision",
    "l0_sparsity.presets": "l0_sparsity.training.presets",
    "l0_sparsity.purge_cli": "l0_sparsity.cli.purge",
}
"""Old module path → the module (or modules, whose public names it then holds) with its contents."""

REPLACED: dict[str, str] = {
    "l0_sparsity.purge": "l0_sparsity.purging",
    "l0_sparsity.train": "l0_sparsity.training",
}
"""Old module paths that are now top-level functions → the package that holds the module."""


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the frame running the ``import`` statement."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame = frame.f_back
        level += 1
    return level


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old path by importing the new module and putting it under the old name."""

    def __init__(self, new_names: str | tuple[str, ...]) -> None:
        self.new_names = (new_names,) if isinstance(new_names, str) else new_names

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        """Use the default module; :meth:`exec_module` replaces it in ``sys.modules``."""
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        """Warn, import the new module(s) and register the contents under the old name."""
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(self.new_names)}; import it from there "
            "(the old path will be removed in the next release)",
            DeprecationWarning,
            stacklevel=_caller_stacklevel(),
        )
        new_modules = [importlib.import_module(name) for name in self.new_names]
        if len(new_modules) == 1:
            sys.modules[module.__name__] = new_modules[0]
            return
        for new_module in new_modules:
            module.__dict__.update({name: getattr(new_module, name) for name in new_module.__all__})


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the old paths in :data:`MOVED` and refuses those in :data:`REPLACED`."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """Return a spec for a moved module, None for any other name.

        Raises:
            ModuleNotFoundError: For a path in :data:`REPLACED`, naming its new home.
        """
        if fullname in REPLACED:
            function = fullname.rpartition(".")[2]
            raise ModuleNotFoundError(
                f"{fullname} is now the function l0_sparsity.{function}; the module moved to "
                f"{REPLACED[fullname]} (import its names from there or from l0_sparsity)",
                name=fullname,
            )
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Put :class:`MovedModuleFinder` on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
