"""Sphinx extension: the pages' code snippets import what they use.

``doctest_global_setup`` (``conf.py``) imports ``torch`` and ``conopt`` for every doctest group,
so that the ``>>>`` examples of the API docstrings stay short. The same setup would let a
``testcode``/``doctest`` block on a page pass the doctest build while failing for a reader who
pastes it alone. This check closes that gap without running anything: when a page is read, the
code of each doctest *group* is analysed (:mod:`symtable`) in the order the doctest builder runs
it (the group's ``testsetup`` blocks first, then its ``testcode``/``doctest`` blocks in page
order), and a block that uses a name that neither a builtin nor an earlier block of its group
defines or imports warns (an error under ``-W``).

So the first block of a group must run when pasted alone, and a later block of the same group
(a continuation, e.g. ``.. testcode:: solve`` twice on a page) may use only what the group's
earlier blocks, or its ``testsetup``, defined. Give a standalone snippet its own group name.
Only the directives of :mod:`sphinx.ext.doctest` are checked; plain ``>>>`` blocks of the API
docstrings keep relying on the global setup.
"""

from __future__ import annotations

import builtins
import doctest
import symtable
from collections import defaultdict
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

BUILTINS = frozenset(dir(builtins))
TESTED = ("testsetup", "testcode", "doctest")


def _python_source(node: nodes.Element) -> str:
    text = node.get("test", node.astext())
    if node["testnodetype"] == "doctest":
        examples = doctest.DocTestParser().get_examples(text)
        return "".join(example.source for example in examples)
    return text


def names_of(source: str) -> tuple[set[str], set[str]]:
    """(names the code binds at module level, global names it reads); empty on a syntax error."""
    try:
        top = symtable.symtable(source, "<snippet>", "exec")
    except SyntaxError:
        return set(), set()  # the doctest builder reports it
    defined, used = set(), set()
    for symbol in top.get_symbols():
        if symbol.is_assigned() or symbol.is_imported():
            defined.add(symbol.get_name())
        if symbol.is_referenced():
            used.add(symbol.get_name())
    stack = list(top.get_children())
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        for symbol in table.get_symbols():
            if symbol.is_declared_global() and symbol.is_assigned():
                defined.add(symbol.get_name())
            elif symbol.is_global() and symbol.is_referenced():
                used.add(symbol.get_name())
    return defined, used


def _is_test_node(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Element) and node.get("testnodetype") in TESTED


def check_snippets(app: Sphinx, doctree: nodes.document) -> None:
    """Warn about doctest-directive blocks that use names their group never defined."""
    blocks = list(doctree.findall(_is_test_node))
    if not blocks:
        return
    all_groups = {g for node in blocks for g in node["groups"] if g != "*"}
    # The doctest builder runs a group's setup blocks (and those of group "*") before its tests.
    defined: dict[str, set[str]] = defaultdict(set)
    order = [n for n in blocks if n["testnodetype"] == "testsetup"]
    order += [n for n in blocks if n["testnodetype"] != "testsetup"]
    for node in order:
        groups = all_groups if "*" in node["groups"] else node["groups"]
        bound, used = names_of(_python_source(node))
        for group in sorted(groups):
            missing = sorted(used - defined[group] - bound - BUILTINS)
            if missing:
                kind = node["testnodetype"]
                logger.warning(
                    "%s block (group %r) uses %s without importing or defining it: a snippet "
                    "must run when pasted alone, or continue a group whose earlier blocks "
                    "define those names (doctest_global_setup does not count)",
                    kind,
                    group,
                    ", ".join(missing),
                    location=node,
                    type="conopt",
                    subtype="snippet",
                )
            defined[group] |= bound


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the check."""
    app.connect("doctree-read", check_snippets)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
