"""The double click, in a real browser: Debian's Chromium, driven by
Playwright, on the example project's page, served by gunicorn with four
worker processes on PostgreSQL, so that the clicks of a double click can
reach different workers. However the person clicks, and whatever the
network loses, 100 points are charged once, and the page shows the balance
the database holds.

Chromium is launched by its path (nothing can be downloaded here): a machine
without it fails these tests, it does not skip them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import connection

from tests import servers

pytestmark = [pytest.mark.server_db, pytest.mark.vendor("postgresql")]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = servers.ROOT / "docs" / "images" / "double-click.png"
# Long enough that every click of a double click arrives while the first
# charge is still in its transaction.
CHARGE_DELAY = "1.0"


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Iterator[tuple[servers.Server, str]]:
    """The example project on a PostgreSQL database of its own, served by
    gunicorn with four workers; and that database's URL."""
    settings = connection.settings_dict
    name = f"{settings['NAME']}_browser"
    server_url = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    directory = tmp_path_factory.mktemp("browser")
    port = servers.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"{server_url}/{name}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        "EXAMPLE_CHARGE_DELAY": CHARGE_DELAY,
        # The same server under another name is another origin.
        "EXAMPLE_CORS_ORIGINS": f"http://localhost:{port}",
        "EXAMPLE_API_ORIGINS": f"http://{servers.HOST}:{port}",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity=0"],
        cwd=servers.ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    try:
        log = directory / "gunicorn.log"
        with servers.serve("gunicorn", env, log, workers=4, port=port) as server:
            # Each worker says it is ready: four processes serve the page.
            assert server.output().count("tests.wsgi ready") == 4
            yield server, env["DATABASE_URL"]
    finally:
        with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"No Chromium at {CHROMIUM}: apt-get install -y chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


def new_page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.errors = []  # what the page's console said, for a failure's message
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: page.errors.append(message.text))
    return page


@pytest.fixture
def page(browser, example):
    """A signed-in page, as the demo user, by the login form."""
    server, _ = example
    page = new_page(browser)
    page.goto(f"http://{servers.HOST}:{server.port}/")
    assert urlsplit(page.url).path == "/accounts/login/"  # the home page needs a session
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    page.wait_for_url(f"http://{servers.HOST}:{server.port}/")
    yield page
    page.context.close()


def database_state(database_url: str) -> tuple[int, int]:
    """The demo user's balance and number of charges, read from the database."""
    with psycopg.connect(database_url) as db:
        balance, charges = db.execute(
            "SELECT w.balance, (SELECT count(*) FROM wallet_charge c WHERE c.wallet_id = w.id)"
            " FROM wallet_wallet w JOIN auth_user u ON u.id = w.user_id"
            " WHERE u.username = 'demo'"
        ).fetchone()
    return balance, charges


def settle(page, created: int, replayed: int) -> None:
    """Wait until the page has told of ``created`` charges and ``replayed``
    replays, and refreshed its balance."""
    try:
        page.wait_for_function(
            "([created, replayed]) =>"
            " document.querySelectorAll('#log li.created').length === created"
            " && document.querySelectorAll('#log li.replayed').length === replayed",
            arg=[created, replayed],
            timeout=20_000,
        )
    except Exception:
        pytest.fail(f"The page told:\n{page.inner_text('#log')}\n{page.errors}")
    page.wait_for_load_state("networkidle")


SCENARIOS = {
    # clicks, flaky network, then what the page tells: (created, replayed)
    "double click": (2, False, (1, 1)),
    "triple click": (3, False, (1, 2)),
    # The first answer is lost: the retry gets it, replayed.
    "flaky network": (1, True, (0, 1)),
}


@pytest.mark.parametrize("wait", [False, True], ids=["409-then-retry", "wait"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_one_charge_however_the_person_clicks(page, example, scenario, wait):
    _, database_url = example
    clicks, flaky, (created, replayed) = SCENARIOS[scenario]
    balance_before, charges_before = database_state(database_url)
    if flaky:
        page.check("#flaky")
    if wait:
        page.check("#wait")

    page.click("#charge", click_count=clicks, delay=40)
    settle(page, created, replayed)

    balance, charges = database_state(database_url)
    assert charges == charges_before + 1
    assert balance == balance_before - 100
    assert page.text_content("#balance") == str(balance)
    log = page.inner_text("#log")
    if wait or flaky:
        # A duplicate that waited, or a retry after the answer arrived,
        # never meets the charge in flight.
        assert "still being processed" not in log
    else:
        assert "still being processed" in log  # the 409, retried after Retry-After
    if scenario == "double click" and not wait:
        page.screenshot(path=str(_screenshot_path()), full_page=True)


def _screenshot_path() -> Path:
    """Where the double click's screenshot goes: the README shows the
    committed one; set UPDATE_SCREENSHOT=1 to replace it."""
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        return SCREENSHOT
    return Path(os.environ.get("TMPDIR", "/tmp")) / "idempotency-double-click.png"


def test_the_page_on_another_origin(browser, example):
    """The page served as http://localhost:<port>, calling the API at
    http://127.0.0.1:<port>: another origin, allowed by the README's CORS
    settings, which let it send the key and read the replay header."""
    server, database_url = example
    balance_before, charges_before = database_state(database_url)
    page = new_page(browser)
    try:
        api = f"http://{servers.HOST}:{server.port}"
        page.goto(f"http://localhost:{server.port}/remote/?api={api}")
        page.wait_for_function("document.getElementById('balance').textContent !== '…'")
        page.click("#charge", click_count=2, delay=40)
        settle(page, 1, 1)
        balance, charges = database_state(database_url)
        assert (balance, charges) == (balance_before - 100, charges_before + 1)
        assert page.text_content("#balance") == str(balance)
    finally:
        page.context.close()


def test_an_answer_lost_by_a_gateway_is_retried_with_the_same_key(page, example):
    """The charge reached the server, which charged; a proxy answered 504.
    The page keeps the key and asks again: the replay, not a second charge."""
    _, database_url = example
    balance_before, charges_before = database_state(database_url)
    lost = []

    def gateway(route):
        if route.request.method == "POST" and not lost:
            lost.append(route.fetch())  # the server charges
            route.fulfill(status=504, body="Gateway Timeout")
        else:
            route.continue_()

    page.route("**/api/charges/", gateway)
    page.click("#charge")
    settle(page, 0, 1)
    assert "The server answered 504; trying again" in page.inner_text("#log")
    assert lost[0].status == 201
    assert database_state(database_url) == (balance_before - 100, charges_before + 1)
