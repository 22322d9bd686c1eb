"""Sphinx configuration: the API reference is generated from the docstrings (``sphinx-build -W docs docs/_build``)."""

import os
import sys

# The repository root, for a build from a checkout without an install (the tests build a copy and rely on the install).
sys.path.insert(0, os.path.abspath(".."))

project = "lld-jax"
author = "lld-jax developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.autosummary", "sphinx.ext.mathjax"]
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
html_theme = "alabaster"
exclude_patterns = ["_build", "results", "figures"]
suppress_warnings = ["autosummary.import_cycle"]
nitpicky = False
