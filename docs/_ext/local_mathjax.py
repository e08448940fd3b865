"""Sphinx extension: the HTML site loads MathJax from its own ``_static/mathjax/``, not a CDN.

MathJax 3.2.2 comes from the PyPI wheel ``django-static-mathjax`` (pinned in the ``docs`` extra
of ``pyproject.toml``). Despite its name the wheel has no dependencies (no Django): it is
MathJax's own ``mathjax-full`` package, installed as ``site-packages/mathjax/static/mathjax/``.
Its ``es5/`` folder is MathJax's browser build, the folder MathJax's documentation says to copy
when hosting MathJax yourself.

After an HTML build, this extension copies from ``es5/``:

* the combined component that ``mathjax_path`` names (``conf.py``: ``tex-mml-chtml.js``, what
  Sphinx would otherwise fetch from the CDN), and
* every sub-folder (``output/chtml/fonts/woff-v2/`` with the fonts, and the components MathJax
  loads on demand: TeX extensions, the menu's renderers and accessibility tools),

into ``<outdir>/_static/mathjax/``, with MathJax's ``LICENSE`` (Apache-2.0). MathJax finds
those files relative to the URL of its script, so the site renders math with no network, also
opened from disk (``file://``). Files already in place (same size and modification time) are
not copied again.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

STATIC_SUBDIR = "mathjax"  # under the HTML output's _static/
DISTRIBUTION = "django-static-mathjax"


def mathjax_es5_dir() -> Path:
    """The ``es5`` folder of the installed MathJax (raises ExtensionError if missing)."""
    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise ExtensionError(
        f"MathJax is not installed: the docs serve it from the {DISTRIBUTION!r} wheel. "
        "Install the docs extra (pip install -e '.[docs]'), or run bash scripts/docs.sh."
    )


def _entry_point(app: Sphinx) -> str | None:
    """The file name of ``mathjax_path`` under ``_static/mathjax/``; None for a URL elsewhere."""
    path = app.config.mathjax_path
    prefix = STATIC_SUBDIR + "/"
    if "://" in path or path.startswith("/") or not path.startswith(prefix):
        return None
    return path[len(prefix) :]


def check_config(app: Sphinx) -> None:
    """Fail early (before reading sources) if MathJax is missing or mathjax_path is wrong."""
    if app.builder.format != "html":
        return
    entry = _entry_point(app)
    if entry is None:
        return  # a mathjax_path set to a URL on purpose (e.g. -D mathjax_path=...): not ours
    es5 = mathjax_es5_dir()
    if not (es5 / entry).is_file():
        available = sorted(p.name for p in es5.glob("*.js"))
        raise ExtensionError(
            f"mathjax_path = {app.config.mathjax_path!r}: no {entry!r} in {es5} "
            f"(combined components there: {', '.join(available)})"
        )


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.is_file():
        s, t = source.stat(), target.stat()
        if s.st_size == t.st_size and int(s.st_mtime) == int(t.st_mtime):
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """Copy the entry component and es5's sub-folders into ``_static/mathjax``."""
    if exception is not None or app.builder.format != "html":
        return
    entry = _entry_point(app)
    if entry is None:
        return
    es5 = mathjax_es5_dir()
    target = Path(app.outdir) / "_static" / STATIC_SUBDIR
    _copy_if_changed(es5 / entry, target / entry)
    _copy_if_changed(es5.parent / "LICENSE", target / "LICENSE")  # Apache-2.0, kept beside it
    for folder in sorted(p for p in es5.iterdir() if p.is_dir()):
        for source in folder.rglob("*"):
            if source.is_file():
                _copy_if_changed(source, target / source.relative_to(es5))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the events."""
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("builder-inited", check_config)
    app.connect("build-finished", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
