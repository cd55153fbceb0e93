"""report.html of a real (tiny) run: its numbers are the run folder's, every head is reachable, and in
a headless Chromium the page loads without console errors and the head menu and the map change the
plotted curve. The browser comes from `make test` (scripts/browser.sh); a screenshot is kept in
build/test-artifacts/."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_models import save_tiny

from staterank import runio
from staterank.cli import main
from staterank.report import heads_view
from staterank.report import html as report_html

ARTIFACTS = Path(os.environ.get("STATERANK_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A whole `staterank run` (stratify → probe → prune → claims) on a tiny model, small settings."""
    tmp = tmp_path_factory.mktemp("html")
    save_tiny(tmp / "m", "qwen3_next", h_k=2, h_v=4, k=8, v=8)
    out = tmp / "run"
    assert main(["run", "--model", str(tmp / "m"), "--quiet", "--out", str(out),
                 "--set", "stratify.max_tokens=48", "--set", "stratify.suite=natural",
                 "--set", "probe.tasks=[arith]", "--set", "probe.limit=4", "--set", "probe.seeds=2",
                 "--set", "probe.single_head=false", "--set", "prune.tasks=[arith]", "--set", "prune.eval_n=4",
                 "--set", "prune.random_seeds=2", "--set", "prune.calib_tokens=48", "--set", "prune.state_context=32",
                 "--set", "prune.calib_suite=natural", "--ranks-csv"]) == 0
    return out


def test_report_html_beside_every_report_md(run):
    for md in [run / "report.md", *run.glob("*/report.md")]:
        page = (md.parent / "report.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>")
        # self-contained: plotly inlined once, nothing fetched at view time
        assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
        assert page.count("/**\n* plotly.js v") == 1
    page = (run / "report.html").read_text(encoding="utf-8")
    claims = json.loads((run / "claims.json").read_text())
    for r in claims["rows"]:
        assert report_html._esc(r["claim"]) in page
    for div in ("heads-curve", "heads-map", "heads-overview", "probe-fig", "prune-fig"):
        assert f'id="{div}"' in page


def test_head_views_hold_the_run_numbers(run):
    """The curves are the mean over texts of dynamics.npz, the map is heads.csv's mean rank, and the
    menu has one entry per head, named with its class from stratify.json."""
    d = heads_view.load(run)
    z = runio.read_npz(run / "stratify" / "analyze" / "dynamics.npz")
    L, H = z["threshold_rank"].shape[1:3]
    every = np.isfinite(z["threshold_rank"]).all(axis=(0, 1, 2))
    np.testing.assert_allclose(d["rank"], z["threshold_rank"].mean(axis=0)[..., every])
    np.testing.assert_allclose(d["nuclear"], z["nuclear_norm"].mean(axis=0)[..., every])
    with open(run / "stratify" / "analyze" / "heads.csv") as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose(d["mean_rank"].ravel(), [float(r["mean_threshold_rank"]) for r in rows], rtol=1e-5)
    labels = json.loads((run / "stratify" / "stratify.json").read_text())["classes"]["labels"]
    fig = heads_view.curve_figure(d)
    buttons = fig["layout"]["updatemenus"][0]["buttons"]
    assert len(buttons) == L * H
    li, h = L - 1, H - 1
    b = buttons[li * H + h]
    assert b["label"] == f"layer {int(z['layers'][li])} head {h} ({labels[str(int(z['layers'][li]))][h]})"
    np.testing.assert_allclose(np.array(b["args"][0]["y"][0], float), d["rank"][li, h], rtol=1e-4)
    ov = heads_view.overview_figure(d)
    lines = [t for t in ov["data"] if "meta" in t]
    assert [t["meta"] for t in lines] == list(range(L * H))  # a click on a line names its head
    np.testing.assert_allclose(np.array(lines[-1]["y"], float), d["rank"][L - 1, H - 1], rtol=1e-4)
    hm = heads_view.heatmap_figure(d)
    assert list(hm.data[0].x) == list(range(H))  # every head labelled, not every other one


def test_ranks_csv_is_dynamics_npz(run):
    out = run / "ranks.csv"  # written by run --ranks-csv
    z = runio.read_npz(run / "stratify" / "analyze" / "dynamics.npz")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int(np.isfinite(z["threshold_rank"]).sum())
    r = rows[-1]
    n = list(z["texts"]).index(r["text"])
    li = list(z["layers"]).index(int(r["layer"]))
    p = list(z["positions"]).index(int(r["position"]))
    assert float(r["threshold_rank"]) == z["threshold_rank"][n, li, int(r["head"]), p]
    assert float(r["nuclear_norm"]) == pytest.approx(z["nuclear_norm"][n, li, int(r["head"]), p], rel=1e-8)
    assert r["class"] in ("low", "high", "none")


def test_prune_figure_puts_controls_at_their_own_bytes(run, monkeypatch):
    """Issue #24: the random controls were drawn 1–3 % right of their bytes. Each control's marker
    must sit at the original state minus what its own plans removed, and have an interval over seeds."""
    import matplotlib.axes

    from staterank.report import prune

    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, *a, **kw: calls.append((kw.get("label"), list(x), kw.get("yerr"))) or real(self, x, y, *a, **kw))
    prune.render(run / "prune")
    pj = json.loads((run / "prune" / "prune.json").read_text())
    before = pj["state_bytes_before"]
    for kind in pj["accuracy"]["controls"]:
        removed = [json.loads(p.read_text())["summary"]["removed_state_bytes_per_sequence"]
                   for p in (run / "prune" / "baselines").glob(f"{kind}_*.json")]
        want = np.mean([before["linear_state"] - r * before["batch"] for r in removed])
        (got,) = [c for c in calls if c[0] and c[0].startswith(f"random, {kind.replace('_', '-')}")]
        assert got[1] == [pytest.approx(want)], (kind, got[1], want)
        assert "t 95 % interval over 2 seeds" in got[0] and got[2] is not None


def test_text_slips():
    from staterank.report.probe import _cell
    from staterank.report.prune import _mean_std, seed_interval

    r = {"metric": "accuracy", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "delta_vs_base": -0.1, "p_value": 0.2, "seeds": 1}
    assert _cell(r).endswith("×1 seed")
    assert _cell({**r, "seeds": 3}).endswith("×3 seeds")
    assert _mean_std({"mean": 0.5, "std": 0.0, "n_seeds": 1}) == "0.500 (1 seed: no spread)"
    assert seed_interval({"mean": 0.5, "std": 0.0, "n_seeds": 1}) is None
    lo, hi = seed_interval({"mean": 0.5, "std": 0.1, "n_seeds": 4})
    assert (lo, hi) == pytest.approx((0.5 - 3.182446 * 0.05, 0.5 + 3.182446 * 0.05), rel=1e-6)


def _browser():
    """A headless Chromium through its Debian chromedriver, or a skip saying why there is none."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = Path(__file__).resolve().parent.parent / ".venv" / ".staterank-browser-missing"
    if not (chromium and driver):
        why = missing.read_text().strip() if missing.is_file() else "run `make test` (it installs chromium chromium-driver)"
        pytest.skip(f"no chromium/chromedriver on PATH: {why}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (the dev extra): pip install -e '.[dev]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_report_html_in_a_real_browser(run):
    d = heads_view.load(run)
    L, H = d["mean_rank"].shape
    browser = _browser()
    try:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get((run / "report.html").resolve().as_uri())
        WebDriverWait(browser, 60).until(lambda b: b.execute_script(
            "var e = document.getElementById('heads-curve'); return !!(e && e.data && e.layout.updatemenus);"))
        curve = "return Array.from(document.getElementById('heads-curve').data[0].y);"
        name = "return document.getElementById('heads-curve').data[0].name;"
        np.testing.assert_allclose(np.array(browser.execute_script(curve), float), d["rank"][0, 0], rtol=1e-4)

        # the menu: open it, choose the last head of the last layer
        browser.find_element(By.CSS_SELECTOR, "#heads-curve .updatemenu-header").click()
        items = WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heads-curve .updatemenu-dropdown-button"))
        assert len(items) == L * H
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", items[-1])
        items[-1].click()
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(name).startswith(f"layer {d['layers'][-1]} head {H - 1} "))
        np.testing.assert_allclose(np.array(browser.execute_script(curve), float), d["rank"][L - 1, H - 1], rtol=1e-4)

        # the map: a real click on the cell of layer 0, head 1 shows that head's curve
        cell = browser.execute_script(
            "var g = document.getElementById('heads-map'), fl = g._fullLayout, r = g.getBoundingClientRect();"
            "window.scrollTo(0, 0); r = g.getBoundingClientRect();"
            "return [fl.xaxis._offset + fl.xaxis.d2p(1) - r.width / 2, fl.yaxis._offset + fl.yaxis.d2p(arguments[0]) - r.height / 2];",
            str(d["layers"][0]))
        browser.execute_script("document.getElementById('heads-map').scrollIntoView({block: 'center'});")
        hm = browser.find_element(By.ID, "heads-map")
        ActionChains(browser).move_to_element_with_offset(hm, int(cell[0]), int(cell[1])).click().perform()
        WebDriverWait(browser, 10).until(lambda b: b.execute_script(name).startswith(f"layer {d['layers'][0]} head 1 "))
        np.testing.assert_allclose(np.array(browser.execute_script(curve), float), d["rank"][0, 1], rtol=1e-4)

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.execute_script("window.scrollTo(0, 0);")
        assert browser.save_screenshot(str(ARTIFACTS / "report_html.png"))
        print(f"screenshot: {ARTIFACTS / 'report_html.png'}")
    finally:
        browser.quit()
