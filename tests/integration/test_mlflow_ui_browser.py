"""What a user sees in MLflow's UI after a search: a real ``mlflow ui`` on the search's store, driven by a
real headless browser (the system's chromium and chromedriver, e.g. Debian's ``chromium`` and
``chromium-driver``; nothing is downloaded). Without them the test skips, unless
``CKPTMERGE_REQUIRE_BROWSER`` is set (``.ci/run`` sets it once it has installed them).

The page ckptmerge's summary links to opens on the experiment's runs (not the GenAI traces overview);
the search run holds its trials, whose ``lambda`` and ``objective`` can be shown as columns; the run's
description is ckptmerge's summary with the GP posterior plot rendered in it; the plot is among the
artifacts; the registered model shows its ``candidate`` alias.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

WAIT_S = 60  # generous: the first page load compiles MLflow's JS bundle on a busy 2-core machine


def _browser() -> tuple[str, str]:
    """The system's chromium (or chrome) and its chromedriver; skip, saying what to install, without them."""
    pytest.importorskip("selenium", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
            if shutil.which(b)
        ),
        None,
    )
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).is_file()), None
    )
    if not browser or not driver:
        if os.environ.get("CKPTMERGE_REQUIRE_BROWSER"):  # CI installed one: its absence is a failure
            pytest.fail(
                f"CKPTMERGE_REQUIRE_BROWSER is set but no browser/driver was found (browser={browser}, driver={driver})"
            )
        pytest.skip(
            "no browser to drive: install chromium and its driver (Debian: apt-get install chromium chromium-driver)"
        )
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"mlflow ui did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ui(e2e_search):
    """``mlflow ui`` on the finished search's store, as the summary tells the user to start it (the
    browser fixture waits for it, after starting the browser meanwhile)."""
    _browser()  # skip before starting anything when there is no browser
    work, uri, _, result = e2e_search
    port = _free_port()
    log_path = work / "mlflow-ui.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, uri, result, lambda: _wait_up(base, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(ui):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = _browser()
    opts = Options()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=2000,1300",
    ):
        opts.add_argument(arg)
    # An explicit driver path: Selenium Manager (which would download one) is never asked.
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    try:
        ui[3]()  # the server has been starting meanwhile
        yield d
    finally:
        d.quit()


def _text(d) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.TAG_NAME, "body").text


def _wait(d, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(d, WAIT_S, poll_frequency=0.25).until(lambda _: condition())
    except Exception:
        d.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / "ckptmerge-ui-failure.png"))
        raise AssertionError(f"the UI never showed {what}; it showed:\n{_text(d)[:3000]}") from None


def _find(d, xpath: str, what: str):
    from selenium.webdriver.common.by import By

    return _wait(d, lambda: (d.find_elements(By.XPATH, xpath) or [None])[0], what)


def _show_column(d, name: str) -> None:
    """Tick ``name`` in the runs table's "Columns" menu, as a user does."""
    from selenium.webdriver.common.keys import Keys

    _find(d, "//button[normalize-space(.)='Columns']", "the Columns menu").click()
    search = _find(d, "//input[@placeholder='Search columns']", "the column search box")
    search.send_keys(name)
    node = f"//div[contains(@class, 'tree-treenode')][normalize-space(.)='{name}']"
    _find(
        d,
        f"{node}//span[contains(@class, 'tree-checkbox')] | {node}//span[contains(@class, "
        "'tree-node-content-wrapper')]",
        f"column {name} in the menu",
    ).click()
    search.send_keys(Keys.ESCAPE)


def _row_text(d, run_id: str) -> dict[str, str]:
    """The cells of a run's row, by column id (ag-grid splits a row over pinned and scrolled parts)."""
    from selenium.webdriver.common.by import By

    cells = d.find_elements(By.XPATH, f"//*[@role='row'][@row-id='{run_id}']//*[@role='gridcell']")
    return {c.get_attribute("col-id"): c.text for c in cells}


def test_the_summary_link_opens_the_runs_with_trials_lambda_and_objective(ui, browser):
    from ckptmerge.report import runs_url

    base, uri, result, _ = ui
    exp, parent = result["mlflow"]["experiment_id"], result["mlflow"]["run_id"]
    t0 = time.monotonic()
    # the link the summary prints, with mlflow ui's default address replaced by this server's
    browser.get(runs_url(uri, exp).replace("http://127.0.0.1:5000", base))
    run_name = MlflowClient(uri).get_run(parent).info.run_name
    _wait(browser, lambda: run_name in _text(browser), f"the search run {run_name}")
    assert f"/experiments/{exp}/runs" in browser.current_url and "overview" not in browser.current_url
    assert "Detect Issues" not in _text(browser)  # the GenAI traces overview's pop-up

    children = MlflowClient(uri).search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == len(result["trials"])
    # the search's row expands to its trials (nested runs)
    _find(
        browser,
        f"//*[@role='row'][@row-id='{parent}']//button[contains(@data-component-id, 'runnamecellrenderer')]",
        "the search row's expander",
    ).click()
    _wait(browser, lambda: all(c.info.run_name in _text(browser) for c in children), "every trial under the search")
    _show_column(browser, "lambda")
    _show_column(browser, "objective")
    for c in children:  # each trial's row shows its own λ and objective

        def cells(c=c):
            row = _row_text(browser, c.info.run_id)
            lam = next((v for k, v in row.items() if "lambda" in k), None)
            obj = next((v for k, v in row.items() if "objective" in k and "objective_se" not in k), None)
            return (lam, obj) if lam and obj else None

        lam, obj = _wait(browser, cells, f"lambda and objective of {c.info.run_name}")
        assert float(lam) == pytest.approx(float(c.data.params["lambda"]), abs=1e-3), (c.info.run_name, lam)
        assert float(obj) == pytest.approx(c.data.metrics["objective"], abs=1e-3), (c.info.run_name, obj)
    print(f"runs page: {time.monotonic() - t0:.1f} s")


def test_search_run_shows_description_plot_and_artifacts(ui, browser):
    from ckptmerge.tracking.description import ui_url

    base, _, result, _ = ui
    exp, parent = result["mlflow"]["experiment_id"], result["mlflow"]["run_id"]
    browser.get(ui_url(base, exp, parent))
    _wait(browser, lambda: "ckptmerge search" in _text(browser), "the run's description")
    text = _text(browser)
    assert f"λ = {result['lambda']:.4f}" in text and "Gain over" in text and f"Decision: {result['decision']}" in text
    img = _find(browser, "//img[contains(@src, 'gp_posterior.png')]", "the plot's image")
    _wait(
        browser,
        lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100,
        "the GP posterior plot rendered in the description",
    )
    browser.get(ui_url(base, exp, parent).replace(f"/runs/{parent}", f"/runs/{parent}/artifacts"))
    _wait(
        browser, lambda: "gp_posterior.png" in _text(browser) and "result.json" in _text(browser), "the run's artifacts"
    )


def test_registered_model_shows_candidate_alias(ui, browser):
    base, _, result, _ = ui
    name = result["registered_model"]["name"]
    browser.get(f"{base}/#/models/{name}")
    _wait(
        browser,
        lambda: "candidate" in _text(browser) and "Version 1" in _text(browser),
        f"version 1 of {name} with its alias candidate",
    )
