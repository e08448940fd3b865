"""The top-level API and the old (0.1) import paths."""

import importlib
import sys
import types

import pytest

import l0_sparsity as l0
from l0_sparsity import _moved_modules


def test_the_top_level_gives_the_common_path():
    for name in (
        "sparsify",
        "SparsityProblem",
        "ComputeCost",
        "purge",
        "export",
        "train",
        "TrainConfig",
    ):
        assert name in l0.__all__
        assert getattr(l0, name) is not None
    assert callable(l0.purge) and callable(l0.train)


def test_the_packages_export_the_functions_not_modules_of_the_same_name():
    gates, purging = l0.nn, l0.purging
    assert l0.export is purging.export and l0.purge is purging.purge
    assert l0.sparsify is gates.sparsify
    for function in (gates.sparsify, purging.purge, purging.export, purging.save_purged):
        assert callable(function) and not isinstance(function, types.ModuleType)


@pytest.mark.parametrize(
    ("old", "new"), sorted((k, v) for k, v in _moved_modules.MOVED.items() if isinstance(v, str))
)
def test_an_old_path_gives_the_same_module_with_a_deprecation_warning(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize(("old", "new"), sorted(_moved_modules.REPLACED.items()))
def test_an_old_module_that_is_now_a_function_is_refused_naming_its_new_home(old, new):
    with pytest.raises(ModuleNotFoundError, match=new.replace(".", r"\.")):
        importlib.import_module(old)
    assert callable(getattr(l0, old.rpartition(".")[2]))


def test_the_old_layers_path_holds_the_names_of_nn_and_measures(monkeypatch):
    monkeypatch.delitem(sys.modules, "l0_sparsity.layers", raising=False)
    with pytest.warns(DeprecationWarning, match=r"l0_sparsity\.nn and l0_sparsity\.measures"):
        old = importlib.import_module("l0_sparsity.layers")
    assert old.L0Linear is l0.L0Linear and old.sparsify is l0.sparsify
    assert old.test_density is l0.test_density and old.gated_layers is l0.nn.gated_layers
