"""The README and docs/: what a newcomer reads first stays short, in its
order, renders cleanly, and links only to pages that exist; every shell
example can be pasted into bash or zsh. (CI builds docs/ with Sphinx, warnings
as errors; docs/conf.py turns the README's links into checked references.)"""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
DOCS = ROOT / "docs"

SECTIONS = [
    "Quick start",
    "Try it: the example project",
    "Install",
    "Usage",
    "HTTP behaviour",
    "Settings",
    "Testing your project",
    "OpenAPI",
    "CORS",
    "Signals and logs",
    "Redis",
    "Further documentation",
]

# Pages of the documentation that the README need not link to.
NOT_LINKED = {"index.rst", "changelog.rst"}


def render(path: Path) -> tuple[docutils.nodes.document, str]:
    """The parsed document and whatever docutils warned about (docutils only:
    Sphinx's roles in docs/ are Sphinx's to check)."""
    warnings = io.StringIO()
    document = docutils.core.publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={"halt_level": 5, "report_level": 2, "warning_stream": warnings},
    )
    return document, warnings.getvalue()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^\.\. code-block:: shell\n\n((?:    .*\n|\n)+)", text, re.MULTILINE)


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 460


def test_the_readme_renders_without_warnings():
    _, warnings = render(README)
    assert warnings == ""


def test_the_readme_sections_come_in_the_order_a_newcomer_reads_them():
    document, _ = render(README)
    assert document["title"] == "django-idempotency"
    titles = [
        section.next_node(docutils.nodes.title).astext()
        for section in document.children
        if isinstance(section, docutils.nodes.section)
    ]
    assert titles == SECTIONS


def readme_links() -> set[str]:
    return set(re.findall(r"<((?:docs/)?[\w./-]+\.rst)>`__", README.read_text()))


def test_every_page_the_readme_links_to_exists():
    links = readme_links()
    assert links
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_the_readme_links_to_every_page():
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.rst") if page.name not in NOT_LINKED}
    assert pages - readme_links() == set()


@pytest.mark.parametrize(
    "path",
    [README, ROOT / "CHANGELOG.rst", *sorted(DOCS.glob("*.rst"))],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_no_reference_to_documents_outside_the_repository(path):
    text = path.read_text()
    assert re.findall(r"(?i)\bcontract\b|STYLE\.md|\bG\d+\b", text) == []


@pytest.mark.parametrize(
    "path", [README, *sorted(DOCS.glob("*.rst"))], ids=lambda path: str(path.relative_to(ROOT))
)
def test_shell_examples_hold_no_comments(path):
    """zsh reads ``#`` typed at its prompt as a word, not a comment, unless
    ``interactivecomments`` is set: pasted there, a comment becomes a command
    or an argument."""
    lines = [line for block in shell_blocks(path.read_text()) for line in block.splitlines()]
    assert [line for line in lines if re.search(r"(^|\s)#", line)] == []
