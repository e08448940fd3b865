"""Sphinx configuration of the conopt documentation.

Build (what ``bash scripts/docs.sh`` runs)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

The build works offline. Intersphinx links to Python, PyTorch and NumPy are configured but only
fetched when ``CONOPT_DOCS_INTERSPHINX=1`` is set (the inventories come from the internet);
without it, references to those projects render as plain text and never warn.

Math renders offline too: MathJax is served from the site's own ``_static/mathjax/`` (copied
from the ``django-static-mathjax`` wheel by ``docs/_ext/local_mathjax.py``), never from a CDN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The packages are importable from an editable install; these paths make a plain checkout work.
sys.path[:0] = [str(ROOT), str(ROOT / "applications"), str(DOCS / "_ext")]

# Keep the build light on shared CPUs: examples and doctests run on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

import conopt  # noqa: E402

project = "conopt"
author = "the conopt authors"
copyright = "2025, the conopt authors"
release = conopt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "local_mathjax",  # docs/_ext/local_mathjax.py: MathJax files copied into _static/mathjax
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
    "conopt_docs",  # docs/_ext/conopt_docs.py: API pages, preset table, reference checks
    "snippet_check",  # docs/_ext/snippet_check.py: every testcode/doctest group imports its names
]

# --------------------------------------------------------------------------- intersphinx
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
if os.environ.get("CONOPT_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_timeout = 10

# --------------------------------------------------------------------------- sources
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/GALLERY_HEADER.rst"]
default_role = "code"
nitpicky = True  # broken references to conopt / l0_sparsity fail the build (see _ext)
suppress_warnings = ["config.cache"]

# --------------------------------------------------------------------------- autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
add_module_names = False
python_use_unqualified_type_names = True

# --------------------------------------------------------------------------- doctest
doctest_global_setup = """
import torch
import conopt
torch.manual_seed(0)
torch.set_num_threads(1)
"""
doctest_default_flags = __import__("doctest").ELLIPSIS | __import__("doctest").NORMALIZE_WHITESPACE

# --------------------------------------------------------------------------- gallery
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "capture_repr": (),
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "show_memory": False,
    "write_computation_times": True,
}

# --------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"conopt {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}
# MathJax 3.2.2 from the site's own files (see docs/_ext/local_mathjax.py); relative to _static.
mathjax_path = "mathjax/tex-mml-chtml.js"
pygments_style = "friendly"
pygments_dark_style = "monokai"

copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False
