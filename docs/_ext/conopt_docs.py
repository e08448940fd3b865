"""Sphinx extension of the conopt docs: generated API pages and tables that cannot go stale.

* **API pages.** At ``builder-inited`` every public module of ``conopt`` and ``l0_sparsity`` is
  found with :mod:`pkgutil` and gets a page under ``docs/generated/api/``: the module docstring,
  a summary table, and one autodoc entry per name *defined* in the module. Packages that
  re-export names (``conopt``, ``conopt.optim``, ``l0_sparsity.data``, ...) list them with links
  to the defining module, and ``conopt.Constraint`` style references resolve to it.
* **Completeness.** Every name in a module's ``__all__`` must be documented somewhere and have a
  docstring; otherwise the build warns (an error under ``-W``).
* **References.** The build is nitpicky for our own packages only: a reference to a
  ``conopt``/``l0_sparsity`` object that does not resolve warns; references to Python, PyTorch
  or NumPy objects stay plain text when intersphinx is off (offline builds).
* **Tables.** ``.. l0-presets-table::`` (every preset of
  :data:`l0_sparsity.training.presets.PRESETS`),
  ``.. l0-config-flags::`` (every
  :class:`~l0_sparsity.training.config.TrainConfig` field as a flag) and
  ``.. l0-cli-help:: [SUBCOMMAND]`` (the argparse help text) are generated at build time.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import os
import pkgutil
import re
import typing
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

PACKAGES = ("conopt", "l0_sparsity")
# Pages in this order first; modules found later (new ones) are appended alphabetically.
PREFERRED_ORDER = (
    "conopt",
    "conopt.problem",
    "conopt.formulations",
    "conopt.multipliers",
    "conopt.diagnostics",
    "conopt.distributed",
    "conopt.errors",
    "conopt.feasibility",
    "conopt.optim",
    "conopt.optim.constrained",
    "conopt.optim.simultaneous",
    "conopt.optim.alternating",
    "conopt.optim.extragradient",
    "conopt.optim.nupi",
    "conopt.optim.lagrangian",
    "conopt.optim.grouping",
    "conopt.solver",
    "conopt.integrations",
    "conopt.integrations.lightning",
    "conopt.integrations.hf",
    "conopt.integrations.accelerate",
    "conopt.integrations.wrapped_optimizer",
    "l0_sparsity",
    "l0_sparsity.nn",
    "l0_sparsity.nn.gates",
    "l0_sparsity.nn.base",
    "l0_sparsity.nn.linear",
    "l0_sparsity.nn.conv",
    "l0_sparsity.nn.batchnorm",
    "l0_sparsity.nn.gate_set",
    "l0_sparsity.nn.sparsifying",
    "l0_sparsity.nn.attention",
    "l0_sparsity.nn.transformer",
    "l0_sparsity.nn.bert",
    "l0_sparsity.measures",
    "l0_sparsity.measures.compute",
    "l0_sparsity.measures.latency",
    "l0_sparsity.problem",
    "l0_sparsity.budget_measures",
    "l0_sparsity.purging",
    "l0_sparsity.purging.exporting",
    "l0_sparsity.purging.bert",
    "l0_sparsity.purging.hf_directory",
    "l0_sparsity.models",
    "l0_sparsity.data",
    "l0_sparsity.data.text",
    "l0_sparsity.encoders",
    "l0_sparsity.encoders.distillation",
    "l0_sparsity.encoders.training",
    "l0_sparsity.training",
    "l0_sparsity.training.config",
    "l0_sparsity.training.presets",
    "l0_sparsity.training.trainer",
    "l0_sparsity.training.checkpoint",
    "l0_sparsity.cli",
    "l0_sparsity.demo",
)
# Deprecated forwarding modules (kept one release for old import paths) get no page.
EXCLUDED_MODULES = ("__main__", "conopt.optim.alm")


@dataclasses.dataclass
class Documented:
    """One name documented on a module page."""

    module: str
    name: str
    kind: str  # "class", "exception", "function", "data"
    obj: Any
    doc: str | None

    @property
    def fullname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclasses.dataclass
class Registry:
    """What the API pages document, and the public aliases that point to it."""

    modules: list[str] = dataclasses.field(default_factory=list)
    documented: dict[str, list[Documented]] = dataclasses.field(default_factory=dict)
    by_id: dict[int, Documented] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


REGISTRY = Registry()


# ------------------------------------------------------------------------------ discovery
def discover_modules() -> list[str]:
    """Every public module of our packages, in :data:`PREFERRED_ORDER` first."""
    found: set[str] = set()
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.add(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            parts = info.name.split(".")
            if any(p.startswith("_") for p in parts[1:]) or {parts[-1], info.name} & set(
                EXCLUDED_MODULES
            ):
                continue
            found.add(info.name)
    ordered = [m for m in PREFERRED_ORDER if m in found]
    return ordered + sorted(found - set(ordered))


def _top_level_order(module: Any) -> dict[str, int]:
    """Line of each top-level definition or assignment in the module's source."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return {}
    order: dict[str, int] = {}
    for node in ast.parse(source).body:
        names: list[str] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        for name in names:
            order.setdefault(name, node.lineno)
    return order


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def local_names(module_name: str) -> list[Documented]:
    """The public names a module defines itself (classes, functions, documented constants)."""
    module = importlib.import_module(module_name)
    order = _top_level_order(module)
    try:
        attr_docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    except Exception:
        attr_docs = {}
    public = getattr(module, "__all__", None)
    result: list[Documented] = []
    for name, _ in sorted(order.items(), key=lambda item: item[1]):
        if name.startswith("_") or not hasattr(module, name):
            continue
        if public is not None and name not in public:
            continue
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            continue
        kind = _kind(obj)
        if kind == "data":
            lines = attr_docs.get(("", name))
            doc = "\n".join(lines).strip() if lines else None
            if public is None and doc is None:
                continue  # an undocumented module constant outside __all__ is not public API
        else:
            if getattr(obj, "__module__", None) != module_name or obj.__name__ != name:
                continue  # an alias of something defined elsewhere
            doc = inspect.getdoc(obj)
        result.append(Documented(module_name, name, kind, obj, doc))
    return result


def build_registry() -> Registry:
    """Discover the modules, what each documents, and the aliases of re-exported names."""
    registry = Registry()
    registry.modules = discover_modules()
    for module_name in registry.modules:
        entries = local_names(module_name)
        registry.documented[module_name] = entries
        for entry in entries:
            if entry.kind != "data" or not isinstance(entry.obj, (int, float, str, bool)):
                registry.by_id.setdefault(id(entry.obj), entry)
    for module_name in registry.modules:
        module = importlib.import_module(module_name)
        local = {e.name for e in registry.documented[module_name]}
        for name in getattr(module, "__all__", ()):
            if name in local:
                continue
            obj = getattr(module, name, None)
            if inspect.ismodule(obj):
                continue
            target = registry.by_id.get(id(obj))
            if target is None:
                target = _documented_by_name(registry, obj, name)
            if target is None:
                registry.problems.append(
                    f"{module_name}.{name} is in __all__ but documented nowhere: give it a "
                    "docstring (for a constant, a string literal right after the assignment)."
                )
                continue
            registry.aliases[f"{module_name}.{name}"] = target.fullname
    for entries in registry.documented.values():
        for entry in entries:
            if not entry.doc:
                registry.problems.append(f"{entry.fullname} has no docstring.")
    return registry


def _documented_by_name(registry: Registry, obj: Any, name: str) -> Documented | None:
    """A constant re-exported by a package: the module that documents it under that name."""
    for entries in registry.documented.values():
        for entry in entries:
            if entry.name == name and entry.obj is obj:
                return entry
    return None


# ------------------------------------------------------------------------------ pages
def _title(text: str, char: str = "=") -> list[str]:
    literal = f"``{text}``"
    return [literal, char * len(literal), ""]


def _summary(names: list[str]) -> list[str]:
    if not names:
        return []
    return [".. autosummary::", "   :nosignatures:", "", *[f"   {n}" for n in names], ""]


def _is_package(module_name: str) -> bool:
    return hasattr(importlib.import_module(module_name), "__path__")


def module_page(registry: Registry, module_name: str) -> str:
    """The reST of one module's API page."""
    lines = [f".. _api-{module_name}:", "", *_title(module_name)]
    lines += [f".. automodule:: {module_name}", ""]
    entries = registry.documented[module_name]
    if _is_package(module_name):
        children = [
            m
            for m in registry.modules
            if m.startswith(module_name + ".") and m.count(".") == module_name.count(".") + 1
        ]
        if children:
            lines += [".. rubric:: Modules", ""]
            lines += [f"* :mod:`{m}`" for m in children] + [""]
    exported = [
        (alias, target)
        for alias, target in registry.aliases.items()
        if alias.rsplit(".", 1)[0] == module_name
    ]
    if exported:
        lines += [".. rubric:: Re-exported names", ""]
        lines += [
            f"``{module_name}`` re-exports these names; each is documented in its module.",
            "",
        ]
        lines += [".. currentmodule:: None", ""]
        lines += _summary([f"~{target}" for _, target in exported])
        lines += [f".. currentmodule:: {module_name}", ""]
    if entries:
        lines += [".. rubric:: Summary", ""]
        lines += _summary([e.name for e in entries])
    for entry in entries:
        if entry.kind == "class":
            lines += [f".. autoclass:: {entry.name}", "   :members:", ""]
        elif entry.kind == "exception":
            lines += [f".. autoexception:: {entry.name}", "   :members:", ""]
        elif entry.kind == "function":
            lines += [f".. autofunction:: {entry.name}", ""]
        else:
            options = ["   :no-value:"] if len(repr(entry.obj)) > 60 else []
            lines += [f".. autodata:: {entry.name}", *options, ""]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def generate_api_pages(app: Sphinx) -> None:
    """Write ``generated/api/<module>.rst`` and the two toctree fragments."""
    global REGISTRY
    REGISTRY = build_registry()
    out = Path(app.srcdir) / "generated" / "api"
    wanted: set[Path] = set()
    for module_name in REGISTRY.modules:
        path = out / f"{module_name}.rst"
        wanted.add(path)
        _write_if_changed(path, module_page(REGISTRY, module_name))
    for package in PACKAGES:
        toc = [".. toctree::", "   :maxdepth: 1", ""]
        toc += [f"   /generated/api/{m}" for m in REGISTRY.modules if m.split(".")[0] == package]
        path = out / f"_toc_{package}.rst.inc"
        wanted.add(path)
        _write_if_changed(path, "\n".join(toc) + "\n")
    for stale in out.glob("*"):
        if stale not in wanted:
            stale.unlink()


def check_completeness(app: Sphinx, env: Any) -> None:
    """Warn for public names without documentation or docstring, and undocumented entries."""
    for problem in REGISTRY.problems:
        logger.warning("API reference: %s", problem, type="conopt", subtype="api")
    objects = env.get_domain("py").objects
    for entries in REGISTRY.documented.values():
        for entry in entries:
            if entry.fullname not in objects:
                logger.warning(
                    "API reference: %s is not in the built docs.",
                    entry.fullname,
                    type="conopt",
                    subtype="api",
                )


# ------------------------------------------------------------------------------ references
def _import(dotted: str) -> tuple[Any, str] | None:
    """The object named by ``dotted`` (the longest importable module prefix, then attributes).

    Returns the outermost object found that the API pages document, with the rest of the path.
    """
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for i, part in enumerate(parts[split:], start=split):
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                return None
            if id(obj) in REGISTRY.by_id:
                return obj, ".".join(parts[i + 1 :])
        return None
    return None


_MISSING = object()


def _candidates(node: Any) -> list[str]:
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module")
    cls = node.get("py:class")
    found = [target]
    if module:
        found.append(f"{module}.{target}")
        if cls:
            found.append(f"{module}.{cls}.{target}")
    if "." not in target:  # a short name without context (e.g. in a summary table): if unique
        same = [e for entries in REGISTRY.documented.values() for e in entries if e.name == target]
        if len(same) == 1:
            found.append(same[0].fullname)
    return found


def resolve_alias(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve references through re-exports and imports to where the object is documented.

    ``conopt.Constraint`` resolves to ``conopt.problem.Constraint``; ``ProblemState`` written
    in a module that imports it resolves alike. An attribute that has no entry of its own
    (``conopt.problem.ConstraintState.indices``, a dataclass field) links to its class.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for candidate in _candidates(node):
        found = _import(candidate)
        if found is None:
            continue
        obj, rest = found
        canonical = REGISTRY.by_id[id(obj)].fullname
        targets = [f"{canonical}.{rest}" if rest else canonical]
        if rest:
            targets.append(canonical)  # fall back to the documented parent
        for target in targets:
            for reftype in (node["reftype"], "obj"):
                resolved = domain.resolve_xref(
                    env, node["refdoc"], app.builder, reftype, target, node, contnode
                )
                if resolved is not None:
                    return resolved
    return None


def _ours(target: str) -> bool:
    target = target.lstrip(".~")
    if any(part.startswith("_") for part in target.split(".")):
        return False  # a private base class or helper: not part of the documented API
    if target.split(".")[0] in PACKAGES:
        return True
    short = target.rsplit(".", 1)[-1]
    return any(short == e.name for entries in REGISTRY.documented.values() for e in entries)


def quiet_external(app: Sphinx, domain: Any, node: Any) -> bool | None:
    """Silence unresolved references to other projects (Python, torch) in offline builds."""
    if domain is None or domain.name != "py":
        return None
    return None if _ours(node["reftarget"]) else True


def skip_member(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Hide the auto-generated "Alias for field number N" of NamedTuple fields."""
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.startswith("Alias for field number"):
        return True
    return None


# ------------------------------------------------------------------------------ tables
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return ", ".join(_fmt(v) for v in value) if value else "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _depend_on(directive: SphinxDirective, *modules: str) -> None:
    """Re-read the page when the modules its generated content comes from change."""
    for name in modules:
        path = inspect.getsourcefile(importlib.import_module(name))
        if path:
            directive.env.note_dependency(path)


class _RstDirective(SphinxDirective):
    def render(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(
            StringList(lines, source="conopt_docs"), self.content_offset, container
        )
        return container.children


class PresetsTable(_RstDirective):
    """A table of every preset in ``l0_sparsity.training.PRESETS``, generated at build time."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from l0_sparsity.training.config import TrainConfig
        from l0_sparsity.training.presets import PRESETS

        _depend_on(self, "l0_sparsity.training.presets", "l0_sparsity.training.config")
        base = TrainConfig()
        header = [
            "preset",
            "model, dataset",
            "epochs, batch",
            "weights' optimizer",
            "gates lr, dual lr",
            "weight decay, init drop rate",
            "target",
            "other settings",
        ]
        shown = {
            "preset", "model", "dataset", "epochs", "batch_size", "optimizer", "lr",
            "lr_milestones", "lr_gamma", "gates_lr", "dual_lr", "weight_decay",
            "droprate_init", "target", "layer_targets", "penalty", "output_dir",
        }  # fmt: skip
        rows = []
        for name, p in PRESETS.items():
            weights = f"{p.optimizer} {_fmt(p.lr)}"
            if p.lr_milestones:
                weights += f", ×{_fmt(p.lr_gamma)} at {_fmt(p.lr_milestones)}"
            if p.mode == "layer-wise":
                target = f"layer-wise {_fmt(p.layer_targets)}"
            elif p.mode == "penalized":
                target = f"penalty {_fmt(p.penalty)}"
            else:
                target = _fmt(p.target)
            other = [
                f"``{f.name}={_fmt(getattr(p, f.name))}``"
                for f in dataclasses.fields(p)
                if f.name not in shown and getattr(p, f.name) != getattr(base, f.name)
            ]
            rows.append(
                [
                    f"``{name}``",
                    f"``{p.model}``, ``{p.dataset}``",
                    f"{p.epochs}, {p.batch_size}",
                    weights,
                    f"{_fmt(p.gates_lr)}, {_fmt(p.dual_lr)}",
                    f"{_fmt(p.weight_decay)}, {_fmt(p.droprate_init)}",
                    target,
                    ", ".join(other) or "–",
                ]
            )
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :class: presets-table",
            "   :widths: 16 16 8 16 9 9 8 18",
            "",
        ]
        for row in [header, *rows]:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        return self.render(lines)


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of a Google docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[-1]
    result: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            result[current] = match.group(2).strip()
        elif current and line.startswith("        "):
            result[current] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return result


class ConfigFlags(_RstDirective):
    """Every :class:`~l0_sparsity.training.config.TrainConfig` field as its command-line flag."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from l0_sparsity.training.config import TrainConfig

        _depend_on(self, "l0_sparsity.training.config")
        descriptions = _attribute_docs(TrainConfig)
        hints = typing.get_type_hints(TrainConfig)
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 28 14 58", ""]
        lines += ["   * - flag", "     - base value", "     - meaning"]
        for field in dataclasses.fields(TrainConfig):
            if field.name == "preset":
                continue
            flag = "--" + field.name.replace("_", "-")
            if hints[field.name] is bool:
                flag = f"{flag} / --no-{field.name.replace('_', '-')}"
            lines += [
                f"   * - ``{flag}``",
                f"     - ``{_fmt(field.default)}``",
                f"     - {descriptions.get(field.name, '')}",
            ]
        return self.render(lines)


class CliHelp(SphinxDirective):
    """The ``--help`` text of ``l0-sparsity`` or of one of its subcommands."""

    has_content = False
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from l0_sparsity.cli.app import build_parser

        _depend_on(
            self,
            "l0_sparsity.cli.app",
            "l0_sparsity.cli.flags",
            "l0_sparsity.training.config",
            "l0_sparsity.training.presets",
        )
        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "96"
        try:
            parser = build_parser()
            if self.arguments:
                actions = [a for a in parser._actions if getattr(a, "choices", None)]
                parser = actions[0].choices[self.arguments[0]]
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                parser.print_help()
        finally:
            if previous is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = previous
        text = buffer.getvalue().rstrip()
        block = nodes.literal_block(text, text, language="text")
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the events and directives."""
    app.connect("builder-inited", generate_api_pages)
    app.connect("env-check-consistency", check_completeness)
    app.connect("missing-reference", resolve_alias)
    app.connect("warn-missing-reference", quiet_external)
    app.connect("autodoc-skip-member", skip_member)
    app.add_directive("l0-presets-table", PresetsTable)
    app.add_directive("l0-config-flags", ConfigFlags)
    app.add_directive("l0-cli-help", CliHelp)
    return {
        "version": "1.0",
        "env_version": 1,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
