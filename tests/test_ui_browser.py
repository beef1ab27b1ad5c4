"""The Checkpoints page in a real api-server, driven by headless Chromium (Debian package) through Selenium.

One api-server for the module (simple auth manager: ``admin`` and ``viewer``), with the repo's
example DAGs serialized into its DB and ``TF_CKPT_DEMO_DIR`` pointing at a dir made by real TF
(``tf2_manager``: ckpt-3..5), where, through core functions, every step got a metrics sidecar,
ckpt-3 was promoted (alias ``best``) and ckpt-4 was quarantined. The page must find that dir from
the DAGs alone; ``[tf_ckpt] ui_dirs`` adds a copy on the GCS emulator.

The browser tests skip, with the reason, only where chromium is missing and neither ``CI`` nor
``TF_CKPT_REQUIRE_BROWSER`` is set (``.ci/run`` installs chromium and sets the latter).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gcs_emulator import upload_dir
from tests.ui_server import AirflowUI, chromium_driver, chromium_missing, login

pytestmark = [pytest.mark.airflow, pytest.mark.tf, pytest.mark.gcs]
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = ("tf_ckpt_evaluate_each_step.py", "tf_ckpt_gc.py", "tf_ckpt_event_driven.py")
LOSS = {"ckpt-3": 0.5, "ckpt-4": 0.2, "ckpt-5": 0.3}  # ckpt-4 is the lowest, but quarantined
REASON = "checksum mismatch in ckpt-4.data-00000-of-00001 (test)"


def _need_browser() -> None:
    why = chromium_missing()
    if why is None:
        return
    if os.environ.get("CI") or os.environ.get("TF_CKPT_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests must run here (CI / TF_CKPT_REQUIRE_BROWSER) but {why}")
    pytest.skip(f"browser tests skipped: {why}")


@dataclass
class Page:
    ui: AirflowUI
    root: Path  # TF_CKPT_DEMO_DIR
    ckpt: Path
    gcs_url: str
    tf_paths: list[str]  # TF's get_checkpoint_state(...).all_model_checkpoint_paths after the quarantine


def _make_dir(tf_checkpoints: Any, root: Path) -> Path:
    from airflow_tf_ckpt.core.promote.promote import promote
    from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
    from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step
    from airflow_tf_ckpt.core.storage.location import Location

    ckpt = tf_checkpoints.copy("tf2_manager", root / "checkpoints")
    loc = Location.of(str(ckpt))
    for prefix, loss in LOSS.items():
        write_metrics(loc, prefix, {"loss": loss, "accuracy": 1 - loss})
    promote(loc, str(root / "promoted"), 3, alias="best")
    quarantine_step(loc, "ckpt-4", REASON)
    return ckpt


@pytest.fixture(scope="module")
def page(tf_checkpoints: Any, gcs_emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    from tests.fixtures.tf_checkpoints import tf_subprocess

    root = tmp_path_factory.mktemp("ui-demo")
    ckpt = _make_dir(tf_checkpoints, root)
    tf_paths = tf_subprocess(
        "result = list(tf.train.get_checkpoint_state(args[0]).all_model_checkpoint_paths)", str(ckpt)
    )
    bucket = gcs_emulator.new_bucket("ui")
    upload_dir(gcs_emulator.fs(), ckpt, f"{bucket}/run/checkpoints")
    gcs_url = f"gs://{bucket}/run/checkpoints"
    ui = AirflowUI(
        env={
            "TF_CKPT_DEMO_DIR": str(root),
            "STORAGE_EMULATOR_HOST": gcs_emulator.url,
            "AIRFLOW__TF_CKPT__UI_DIRS": gcs_url,
        }
    )
    for name in EXAMPLE_DAGS:
        shutil.copy(REPO / "dags" / name, ui.dags / name)
    try:
        ui.start()
        yield Page(ui, root, ckpt, gcs_url, [os.path.basename(p) for p in tf_paths])
    finally:
        ui.remove()


@pytest.fixture(scope="module")
def tokens(page: Page) -> dict[str, str]:
    return {u: page.ui.token(u) for u in ("admin", "viewer")}


def _dirs(page: Page, token: str) -> dict[str, dict[str, Any]]:
    status, body = page.ui.request("/tf-ckpt/api/dirs", token=token)
    assert status == 200, body
    return {d["url"]: d for d in body["dirs"]}


# ------------------------------------------------------------------------------------- HTTP


def test_every_route_needs_a_login(page: Page) -> None:
    from airflow_tf_ckpt.ui.app import create_app

    routes = [
        (r.path, sorted(r.methods)[0])
        for r in create_app().routes
        if r.path.startswith(("/api", "/static")) or r.path == "/"
    ]
    assert len(routes) >= 10
    for path, method in routes:
        url = "/tf-ckpt" + path.replace("{dir_id}", "x").replace("{prefix}", "ckpt-5").replace(
            "{name}", "app.js"
        )
        status, body = page.ui.request(url, method=method, body={"reason": "r"} if method == "POST" else None)
        assert status == 401, (url, status, body)
    status, body = page.ui.request("/tf-ckpt/api/dirs", token="not-a-jwt")
    assert status in (401, 403)
    # the page itself (in the iframe) answers an expired session with a line of HTML, not raw JSON
    import urllib.error
    import urllib.request

    req = urllib.request.Request(page.ui.url + "/tf-ckpt/", headers={"Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401 and b"log in again" in err.value.read()


def test_dirs_come_from_the_dags_and_ui_dirs(page: Page, tokens: dict[str, str]) -> None:
    dirs = _dirs(page, tokens["viewer"])
    assert set(dirs) == {str(page.ckpt), page.gcs_url}
    local = dirs[str(page.ckpt)]
    assert local["retention"] == ["tf_ckpt_gc.retention"]
    assert any("CheckpointSensor" in w for w in local["used_by"])
    assert dirs[page.gcs_url]["used_by"] == ["[tf_ckpt] ui_dirs"]


def test_steps_agree_with_tf_on_local_and_gcs(page: Page, tokens: dict[str, str]) -> None:
    dirs = _dirs(page, tokens["viewer"])
    for url in (str(page.ckpt), page.gcs_url):
        status, body = page.ui.request(f"/tf-ckpt/api/dirs/{dirs[url]['id']}/steps", token=tokens["viewer"])
        assert status == 200, body
        rows = {r["prefix"]: r for r in body["rows"]}
        assert list(rows) == ["ckpt-5", "ckpt-4", "ckpt-3"]
        committed = sorted(p for p, r in rows.items() if r["status"] == "committed")
        assert committed == sorted(page.tf_paths)  # TF's state after the quarantine
        assert rows["ckpt-4"]["status"] == "quarantined"
        assert rows["ckpt-3"]["promoted"] == ["best"]
        assert all(r["size"] > 0 and r["saved"] for r in rows.values())
        assert "token" not in str(body).lower() and "endpoint" not in str(body).lower()


def test_retention_dry_run_uses_the_gc_dags_policies(page: Page, tokens: dict[str, str]) -> None:
    d = _dirs(page, tokens["viewer"])[str(page.ckpt)]
    status, body = page.ui.request(f"/tf-ckpt/api/dirs/{d['id']}/retention", token=tokens["viewer"])
    assert status == 200, body
    (plan,) = body["plans"]
    assert plan["task"] == "tf_ckpt_gc.retention"
    assert plan["policies"][:3] == [
        "keep the last 3",
        "keep every 10th step",
        "keep the best 2 by loss of tf_ckpt_evaluate_each_step (min)",
    ]
    why = {prefix: (action, reasons) for _, prefix, action, reasons in plan["decisions"]}
    assert why["ckpt-4"] == ("keep", "quarantined")
    assert "promoted" in why["ckpt-3"][1]
    assert all((page.ckpt / f"{p}.index").exists() for p in LOSS)


def test_quarantine_and_promotion_records(page: Page, tokens: dict[str, str]) -> None:
    d = _dirs(page, tokens["viewer"])[str(page.ckpt)]
    _, q = page.ui.request(f"/tf-ckpt/api/dirs/{d['id']}/quarantine", token=tokens["viewer"])
    assert [(r["prefix"], r["reason"]) for r in q["records"]] == [("ckpt-4", REASON)]
    _, p = page.ui.request(f"/tf-ckpt/api/dirs/{d['id']}/promotions", token=tokens["viewer"])
    assert [(r["prefix"], r["alias"], r["dest"], r["current"]) for r in p["records"]] == [
        ("ckpt-3", "best", str(page.root / "promoted"), True)
    ]
    assert p["aliases"] == [
        {"dest": str(page.root / "promoted"), "aliases": {"best": {"prefix": "ckpt-3", "step": 3}}}
    ]


def test_requests_name_dirs_by_id_only(page: Page, tokens: dict[str, str]) -> None:
    tok = tokens["admin"]
    for bad in ("..%2F..%2Fetc", "%2Ftmp", "gs:%2F%2Fother-bucket", "0"):
        status, _ = page.ui.request(f"/tf-ckpt/api/dirs/{bad}/steps", token=tok)
        assert status == 404, bad
    d = _dirs(page, tok)[str(page.ckpt)]
    for bad in ("..%2Fcheckpoint", "ckpt-99", "checkpoint"):
        status, _ = page.ui.request(
            f"/tf-ckpt/api/dirs/{d['id']}/steps/{bad}/quarantine",
            token=tok,
            method="POST",
            body={"reason": "r"},
        )
        assert status == 404, bad


def test_actions_need_write_access(page: Page, tokens: dict[str, str]) -> None:
    d = _dirs(page, tokens["viewer"])[str(page.ckpt)]
    base = f"/tf-ckpt/api/dirs/{d['id']}/steps/ckpt-5"
    status, body = page.ui.request(
        base + "/quarantine", token=tokens["viewer"], method="POST", body={"reason": "r"}
    )
    assert status == 403, body
    status, body = page.ui.request(
        "/tf-ckpt/api/dirs/" + d["id"] + "/steps/ckpt-4/unquarantine", token=tokens["viewer"], method="POST"
    )
    assert status == 403, body
    assert not (page.ckpt / "ckpt-5.quarantine.json").exists()
    # the admin may: quarantine ckpt-5, then release it again (verified against its checksums)
    status, body = page.ui.request(
        base + "/quarantine", token=tokens["admin"], method="POST", body={"reason": "looks wrong"}
    )
    assert status == 200, body
    assert "looks wrong (by admin" in (page.ckpt / "ckpt-5.quarantine.json").read_text()
    status, body = page.ui.request(base + "/unquarantine", token=tokens["admin"], method="POST")
    assert status == 200, body
    assert not (page.ckpt / "ckpt-5.quarantine.json").exists()
    _, rows = page.ui.request(f"/tf-ckpt/api/dirs/{d['id']}/steps?status=committed", token=tokens["admin"])
    assert sorted(r["prefix"] for r in rows["rows"]) == ["ckpt-3", "ckpt-5"]


# ------------------------------------------------------------------------------------- browser


@pytest.fixture
def browser() -> Iterator[Any]:
    _need_browser()
    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()


def _open_checkpoints(driver: Any, page: Page, user: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    login(driver, page.ui, user)
    wait = WebDriverWait(driver, 90)
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Browse']"))).click()
    wait.until(
        ec.element_to_be_clickable(
            (
                By.XPATH,
                "//*[@role='menuitem'][normalize-space()='Checkpoints'] | //a[normalize-space()='Checkpoints']",
            )
        )
    ).click()
    wait.until(ec.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
    # the first paint may come from the state file alone; wait for the table from the listing
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steps[data-complete='1'] tbody tr[data-prefix]"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#plot circle.best"))
    return wait


def test_the_page_in_chromium(page: Page, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait = _open_checkpoints(browser, page, "viewer")
    rows = browser.find_elements(By.CSS_SELECTOR, "#steps tbody tr[data-prefix]")
    assert [(r.get_attribute("data-prefix"), r.get_attribute("data-status")) for r in rows] == [
        ("ckpt-5", "committed"),
        ("ckpt-4", "quarantined"),
        ("ckpt-3", "committed"),
    ]
    by = {r.get_attribute("data-prefix"): r for r in rows}
    assert by["ckpt-4"].find_element(By.CSS_SELECTOR, ".badge.quarantined").text == "quarantined"
    assert by["ckpt-3"].find_element(By.CSS_SELECTOR, ".badge.promoted").text == "best"
    assert not by["ckpt-5"].find_elements(By.CSS_SELECTOR, ".badge.promoted")
    assert "latest" in by["ckpt-5"].text
    # the plot: one point per evaluated step; best loss among the usable steps is ckpt-5 (0.3),
    # ckpt-4 (0.2) is quarantined: drawn hollow, never the best
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot circle.point")) == 3
    assert browser.find_element(By.CSS_SELECTOR, "#plot circle.best").get_attribute("data-step") == "5"
    assert browser.find_element(By.CSS_SELECTOR, "#plot circle.qpoint").get_attribute("data-step") == "4"
    assert "step 5" in browser.find_element(By.ID, "best").text
    shot = Path(os.environ.get("TF_CKPT_UI_SCREENSHOT") or tmp_path / "checkpoints-page.png")
    browser.switch_to.default_content()
    assert browser.save_screenshot(str(shot))
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    # the other tabs
    browser.find_element(By.CSS_SELECTOR, "button[data-tab=retention]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.plan tr[data-prefix='ckpt-4']"))
    assert "quarantined" in browser.find_element(By.CSS_SELECTOR, "table.plan tr[data-prefix='ckpt-4']").text
    browser.find_element(By.CSS_SELECTOR, "button[data-tab=quarantine]").click()
    assert (
        REASON in browser.find_element(By.CSS_SELECTOR, "#quarantine tr[data-prefix='ckpt-4'] .reason").text
    )
    browser.find_element(By.CSS_SELECTOR, "button[data-tab=promotions]").click()
    assert (
        str(page.root / "promoted")
        in browser.find_element(By.CSS_SELECTOR, "#promotions tr[data-prefix='ckpt-3']").text
    )


def test_a_viewer_gets_403_on_an_action_in_the_page(page: Page, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    wait = _open_checkpoints(browser, page, "viewer")
    browser.find_element(By.CSS_SELECTOR, "button[data-act=quarantine][data-prefix='ckpt-5']").click()
    reason = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-prefix='ckpt-5'] input.reason"))
    reason.clear()
    reason.send_keys("bad")
    browser.find_element(By.CSS_SELECTOR, "button[data-act=do-quarantine][data-prefix='ckpt-5']").click()
    wait.until(lambda d: d.find_element(By.ID, "banner").is_displayed())
    assert "Not allowed" in browser.find_element(By.ID, "banner").text
    assert not (page.ckpt / "ckpt-5.quarantine.json").exists()
