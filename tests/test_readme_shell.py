"""The README's curl story, run as written against the example project, in
bash and in zsh (CI installs both): a reader copies it into either."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers

README = Path(__file__).resolve().parent.parent / "README.rst"


def curl_story() -> str:
    """The first shell block of "Try it: the example project"."""
    section = README.read_text().split("Try it: the example project", 1)[1]
    block = re.search(r"\.\. code-block:: shell\n\n((?:    .*\n|\n)+)", section)
    assert block is not None
    return "\n".join(line[4:] for line in block.group(1).splitlines())


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Iterator[servers.Server]:
    with servers.example_project(tmp_path_factory.mktemp("readme-shell")) as server:
        yield server


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_curl_story_runs_as_written(example, shell, tmp_path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here (CI installs it)")
    script = tmp_path / "story.sh"
    script.write_text(f"export PORT={example.port}\n{curl_story()}\n")
    result = subprocess.run(
        [shell, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    answers = re.findall(r"^HTTP/1\.1 (\d+)", result.stdout, re.MULTILINE)
    assert answers == ["201", "201", "422", "400"], result.stdout
    assert result.stdout.lower().count("idempotent-replayed: true") == 1
    # The retry deducted nothing: the wallet shows the first charge's balance
    # (each shell's story charges the same demo wallet once).
    charged = re.search(r'"balance":(\d+)', result.stdout)
    assert charged is not None
    wallet = json.loads(result.stdout.strip().splitlines()[-1])
    assert wallet["balance"] == int(charged.group(1))
