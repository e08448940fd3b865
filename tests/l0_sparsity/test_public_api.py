"""The top-level API and the old (0.1) import paths."""

import importlib
import sys

import pytest

import l0_sparsity as l0
from l0_sparsity import _moved_modules


def test_the_top_level_gives_the_common_path():
    for name in ("sparsify", "SparsityProblem", "purge", "export", "train", "TrainConfig"):
        assert name in l0.__all__
        assert getattr(l0, name) is not None
    assert callable(l0.purge) and callable(l0.train)


@pytest.mark.parametrize(("old", "new"), sorted(_moved_modules.MOVED.items()))
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
