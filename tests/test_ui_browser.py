"""The Dagster UI in headless Chromium: all three code locations, their assets and their checks render.

Starts dagster-webserver on 127.0.0.1 with workspace.yaml and a temp DAGSTER_HOME, drives Debian's
chromium through Playwright, and saves screenshots under test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from processes import free_port, stop_group
from llmops_dagster.cli import ensure_dagster_home

pytestmark = pytest.mark.slow
WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LOCATIONS = ("llmops-test", "llmops-staging", "llmops-prod")
GROUPS = {
    "ingestion": ("documents", "quarantine", "chunks"),
    "index": ("embeddings", "vector_index"),
    "predictions": ("batch_predictions",),
    "model": ("embedding_model", "rag_model", "evaluation"),  # last: the screenshot shows it
}


@pytest.fixture
def webserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    ensure_dagster_home()
    port = free_port()
    log = (tmp_path / "webserver.log").open("w")
    process = subprocess.Popen(
        [WEBSERVER, "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("dagster-webserver did not come up; see " + str(tmp_path / "webserver.log")) from None
            time.sleep(1)
    try:
        yield base
    finally:
        stop_group(process)
        log.close()


def _dismiss_welcome(page) -> None:
    """A new instance greets with a 'Join the Dagster community' dialog; its Skip is remembered."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.first.wait_for(state="visible", timeout=10_000)
    except Exception:  # no dialog this time
        return
    skip.first.click()


def _visible(page, text: str, timeout: float = 90_000) -> None:
    page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=timeout)


def test_the_three_locations_their_assets_and_checks_render(webserver: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{webserver}/locations")
        for location in LOCATIONS:
            _visible(page, location)
        _dismiss_welcome(page)
        page.screenshot(path=str(ARTIFACTS / "ui-locations.png"))

        for env in ("test", "staging", "prod"):
            for group, assets in GROUPS.items():
                page.goto(f"{webserver}/locations/llmops-{env}/asset-groups/{group}")
                for asset in assets:
                    if env == "test" or asset != "embedding_model":  # staging and prod adopt, they do not train
                        _visible(page, asset)
            page.screenshot(path=str(ARTIFACTS / f"ui-{env}-model-group.png"))

        page.goto(f"{webserver}/assets/test/evaluation?view=checks")
        for check in ("meets_thresholds", "no_worse_than_champion"):
            _visible(page, check)
        page.goto(f"{webserver}/assets/test/rag_model?view=checks")
        for check in ("model_loads_and_answers", "signature_valid"):
            _visible(page, check)
        page.screenshot(path=str(ARTIFACTS / "ui-test-rag-model-checks.png"))
        browser.close()
