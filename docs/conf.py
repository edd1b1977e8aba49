"""Sphinx configuration of the manual (``make docs``; CI builds it with ``-W``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "django-token-rotation"
copyright = "the django-token-rotation authors"
author = "the django-token-rotation authors"

extensions = ["myst_parser"]  # for the changelog, kept as CHANGELOG.md
source_suffix = {".rst": "restructuredtext"}
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header"]

html_theme = "furo"
html_title = "django-token-rotation"
exclude_patterns = ["_build"]
