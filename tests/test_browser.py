"""JupyterLab in a real browser: 00_data_exploration runs cell by cell as a student would see it.

A headless Chromium (Debian's `chromium` package, driven by Playwright without downloading a
browser) opens the notebook in a JupyterLab started on loopback, runs all cells in smoke mode and
checks: no error output, a matplotlib figure shows, the widget browser renders and its "next"
button changes the picture. A screenshot goes to build/jupyterlab_00_data_exploration.png.

`make test-browser` runs it (IMSUB_REQUIRE_BROWSER=1 turns a missing browser into a failure);
`make test` leaves it out (marker `browser`).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_data_exploration.ipynb"


def _chromium() -> str | None:
    """The system Chromium: $IMSUB_CHROMIUM, else chromium / chromium-browser on the PATH."""
    return os.environ.get("IMSUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(reason: str):
    if os.environ.get("IMSUB_REQUIRE_BROWSER"):
        pytest.fail(reason + " (make test-browser needs it: `apt-get install chromium` and `pip install -e .[lab]`)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on loopback over the repository, notebooks in smoke mode; yields its base URL and token."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("jupyterlab is not installed")
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Every cell in the page (JupyterLab 4 may render only the visible ones), no news pop-up.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    docmanager = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    # JupyterLab serves a copy: nothing it saves can touch the committed notebooks.
    lab_root = tmp_path / "lab"
    shutil.copytree(REPO / "notebooks", lab_root / "notebooks")
    env = {**os.environ, "IMSUB_PRESET": "smoke", "IMSUB_ROOT": str(REPO), "PYTHONPATH": str(REPO),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=lab_root)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"jupyterlab exited: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("jupyterlab did not answer within a minute")
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_data_exploration_runs_in_jupyterlab(jupyterlab):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    chromium = _chromium()
    if not chromium:
        _missing("no chromium executable found")
    url, token = jupyterlab
    shots = REPO / "build"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK}?token={token}", timeout=120_000)
            cells = json.loads((REPO / "notebooks" / NOTEBOOK).read_text())["cells"]
            code_cells = sum(c["cell_type"] == "code" for c in cells)
            page.wait_for_function(f"document.querySelectorAll('.jp-Notebook .jp-CodeCell').length === {code_cells}",
                                   timeout=120_000)
            page.get_by_text("| Idle").first.wait_for(timeout=180_000)  # status bar: the kernel has started
            news = page.get_by_role("button", name="No", exact=True)
            if news.count():
                news.first.click()  # the "Jupyter news?" notification

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # Done when every code cell shows an execution count and none is queued or running ([*]).
            deadline = time.time() + 600
            while True:
                prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
                if all(t.strip() not in ("[ ]:", "[*]:", "") for t in prompts) and len(prompts) == code_cells:
                    break
                assert time.time() < deadline, f"cells still running after 10 minutes: {prompts}"
                page.wait_for_timeout(1000)
            page.get_by_text("| Idle").first.wait_for(timeout=60_000)

            outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs and "Error" not in outputs.replace("UserWarning", ""), outputs[-3000:]
            assert page.locator(".jp-OutputArea-output img").count() >= 2, "no matplotlib figure shown"

            picture = page.locator(".widget-image").first
            picture.wait_for(timeout=60_000)
            before = picture.get_attribute("src")
            page.locator("button", has_text="next").first.click()
            page.wait_for_function(
                "before => document.querySelector('.widget-image').getAttribute('src') !== before", arg=before,
                timeout=30_000)
            page.locator(".widget-image").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "jupyterlab_00_data_exploration.png"))
            assert page.locator(".widget-slider .widget-readout").first.inner_text().strip() == "1"
        except Exception:
            page.screenshot(path=str(shots / "jupyterlab_00_data_exploration_failed.png"))
            raise
        finally:
            browser.close()
