"""The built wheel: what it ships, and that it works installed outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import django
import pytest
import rest_framework

import idempotency

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "idempotency",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    USE_TZ=True,
)
django.setup()

import idempotency
import idempotency.decorators
import idempotency.mixins
import idempotency.models
from django.core.management import call_command

call_command("check")
call_command("migrate", verbosity=0)
call_command("purge_idempotency_keys")
print(idempotency.__file__)
"""


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy, so that the build neither reads stale build/ output
    # in the work tree nor leaves its own there.
    source = tmp_path_factory.mktemp("source") / "django-idempotency"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv", ".tox"
        ),
    )
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    # Without build isolation, so that it runs offline: the "test" extra
    # installs the setuptools that [build-system] requires.
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheelhouse),
        str(source),
    )
    (built,) = wheelhouse.glob("*.whl")
    return built


def test_wheel_name(wheel):
    assert wheel.name == f"django_idempotency-{idempotency.__version__}-py3-none-any.whl"


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in [
        "idempotency/__init__.py",
        "idempotency/py.typed",
        "idempotency/migrations/__init__.py",
        "idempotency/migrations/0001_initial.py",
        "idempotency/migrations/0002_release_permission.py",
        "idempotency/templates/admin/idempotency/idempotencykey/"
        "release_in_flight_confirmation.html",
        "idempotency/management/__init__.py",
        "idempotency/management/commands/__init__.py",
        "idempotency/management/commands/purge_idempotency_keys.py",
        "idempotency/backends/database/__init__.py",
        "idempotency/backends/database/postgresql.py",
        "idempotency/backends/redis/store.py",
        f"django_idempotency-{idempotency.__version__}.dist-info/licenses/LICENSE",
    ]:
        assert name in names
    dist_info = f"django_idempotency-{idempotency.__version__}.dist-info/"
    assert {name.split("/")[0] + "/" for name in names} == {"idempotency/", dist_info}
    assert not [name for name in names if name.startswith(("tests/", "example_project/"))]


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(
            f"django_idempotency-{idempotency.__version__}.dist-info/METADATA"
        ).decode()
    lines = metadata.splitlines()
    assert "Name: django-idempotency" in lines
    assert f"Version: {idempotency.__version__}" in lines
    assert "Requires-Dist: Django>=5.2" in lines
    assert "Requires-Dist: djangorestframework>=3.15" in lines
    assert "License-Expression: MIT" in lines
    assert "License-File: LICENSE" in lines


def test_installed_wheel_works_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run(*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel))
    where = run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    purelib = Path(where.stdout.strip())
    # Django and DRF come from the test environment. A .pth line only appends
    # a directory to sys.path: the .pth files in it, such as the editable
    # install's finder of this work tree, are not run.
    dependencies = {Path(module.__file__).parent.parent for module in (django, rest_framework)}
    (purelib / "dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "PYTHONHOME"}
    }

    result = run(str(python), "-c", SCRIPT, cwd=elsewhere, env=env)

    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        "System check identified no issues (0 silenced).",
        "Deleted 0 expired idempotency keys.",
    ]
    installed = Path(lines[-1]).resolve()
    assert installed == purelib.resolve() / "idempotency" / "__init__.py"
    assert REPO_ROOT not in installed.parents
