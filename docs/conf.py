"""Sphinx configuration of django-idempotency's documentation.

Build it from the repository root (CI does, with warnings as errors):

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

The first page is README.rst itself, included; the other pages hold the
detail that the README leaves out.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

project = "django-idempotency"
author = "django-idempotency developers"
copyright = f"2026, {author}"
# The package's version, read where it is kept (pyproject.toml).
release = re.search(
    r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE
).group(1)
version = release

# Sections are referred to by page and title: :ref:`redis:The accelerator`.
extensions = ["sphinx.ext.autosectionlabel"]
autosectionlabel_prefix_document = True
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"{project} {release}"
html_theme_options = {"description": "Run each unsafe request once; replay it to every retry."}
# The README's links point at files in the repository; nothing else is linked to.
html_show_sourcelink = False

# The README links to these pages by their path in the repository, which is
# what a reader of the file itself can follow. Included here, the links
# become references to the pages, which Sphinx checks.
_REPOSITORY_LINK = re.compile(r"`([^`<]+?)\s*<(docs/([\w-]+)|CHANGELOG)\.rst>`__")


def _link_pages(app, relative_path, parent_docname, content):
    if Path(relative_path).name != "README.rst":
        return
    content[0] = _REPOSITORY_LINK.sub(
        lambda match: f":doc:`{match.group(1)} <{match.group(3) or 'changelog'}>`",
        content[0],
    )
    # Its images too, which live under docs/.
    content[0] = content[0].replace(".. image:: docs/", ".. image:: ")


def setup(app):
    app.connect("include-read", _link_pages)
