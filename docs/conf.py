"""Sphinx configuration of the unrolled3d documentation (built by ``.ci/run`` with ``-W``).

Build: ``pip install -r requirements-docs.txt`` then ``sphinx-build -W -b html docs docs/_build/html``.
The gallery (``examples/plot_*.py``) is executed by sphinx-gallery during the build: every example
asserts its own figures (PSNR), so a build that passes has run them all. ``UNROLLED3D_DOCS_NO_GALLERY=1``
builds the pages without running the examples (for a quick look at the text).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import unrolled3d  # noqa: E402  (after sys.path)

project = "unrolled3d"
author = "the unrolled3d developers"
copyright = "the unrolled3d developers, BSD-3-Clause"  # noqa: A001 - Sphinx's name
release = version = unrolled3d.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",      # the package's docstrings are NumPy style
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",              # the guide's Markdown pages (docs/*.md, shared with the repository)
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates"]  # autosummary/module.rst: a package's page lists its modules, each name
                                 # is documented once, in the module that defines it
exclude_patterns = ["_build", "api/generated/**.rst.bak"]
root_doc = "index"

# --- API reference: autosummary pages from the NumPy-style docstrings
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# parameter types are prose ("path", "int or (int, int, int)"), not names to cross-reference
napoleon_use_param = False
napoleon_custom_sections = [("Shapes", "params_style")]
# type names in docstrings are prose ("int or (int, int, int)"), not cross-references
nitpicky = False

# --- Markdown
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# bench/results/report.md (generated, included as it is) puts ### tables under its # title
suppress_warnings = ["myst.header"]

# --- the gallery: examples/plot_*.py, run at build time
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": "False" if os.environ.get("UNROLLED3D_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "show_memory": False,
    "min_reported_time": 1,
}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"unrolled3d {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False
