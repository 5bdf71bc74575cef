"""Helpers for testing pages in Debian's Chromium through Playwright: the browser, a fresh
profile per language, screenshots kept as artefacts, and axe-core's accessibility check.

Chromium is /usr/bin/chromium (never `playwright install`); axe-core is the npm package pinned in
package.json (node_modules/axe-core/axe.min.js), evaluated in the page under test.
Screenshots go to the test's directory, and also to $ONECARD_SCREENSHOTS when set.
Also the real platform's command lines a page test drives: the server's CLI and the desk's local
card service (`onecard cardsvc serve`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium, closed on the way out."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def page_in(browser: Any, locale: str) -> Iterator[Any]:
    """A fresh browser profile (own cookies and storage) whose preferred language is `locale`."""
    context = browser.new_context(viewport={"width": 1100, "height": 800}, locale=locale)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.script_errors = errors
        yield page
    finally:
        context.close()


def shot(page: Any, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("ONECARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / path.name)
    return path


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not AXE.exists():
        pytest.fail("axe-core is missing: run `npm ci` in the repository (package.json)")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the devtools protocol: the page's strict CSP stays in force (a
        # <script> tag added to the page would be refused by it, rightly).
        page.evaluate(AXE.read_text())
    result = page.evaluate("async () => JSON.stringify(await axe.run(document))")
    violations = json.loads(result)["violations"]
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in violations
        if v["impact"] in SERIOUS
    ]


def assert_accessible(page: Any) -> None:
    violations = axe_violations(page)
    assert violations == [], f"axe-core on {page.url}: {violations}"


def server_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """`onecard server ARGS` against the server of `env`; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "onecard.cli", "server", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@contextmanager
def card_service(server_url: str, reader: str, port: int | None = None) -> Iterator[str]:
    """`onecard cardsvc serve` on `reader`, allowing the server's origin; its URL."""
    from onecard.procs import Child, free_port, python_module

    port = port or free_port()
    child = Child(
        "cardsvc",
        python_module(
            "onecard.cli",
            "cardsvc",
            "serve",
            "--reader",
            reader,
            "--allow-origin",
            server_url,
            "--port",
            str(port),
        ),
    )
    try:
        child.wait_for_line(r"cardsvc ready", 15)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()
