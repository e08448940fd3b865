"""Old import paths of the solver keep working for one release, with a DeprecationWarning."""

import importlib
import sys

import pytest

import conopt


def test_the_old_solver_module_warns_and_gives_the_same_solve(monkeypatch):
    monkeypatch.delitem(sys.modules, "conopt.optim.alm", raising=False)
    with pytest.warns(DeprecationWarning, match=r"conopt\.solver"):
        old = importlib.import_module("conopt.optim.alm")
    assert old.solve is conopt.solve and old.SolveResult is conopt.SolveResult


@pytest.mark.parametrize("name", ["solve", "SolveResult"])
def test_the_old_optim_names_warn_and_resolve(name):
    with pytest.warns(DeprecationWarning, match=rf"conopt\.{name}"):
        assert getattr(conopt.optim, name) is getattr(conopt, name)


def test_an_unknown_optim_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = conopt.optim.no_such_name
