"""The example DAGs on a REAL Airflow: scheduler, dag-processor, triggerer and api-server.

``dag.test()`` runs a DAG in one process with triggers inline; it shows none of what a deployment
does to them (timetables, asset-event batching, the triggerer process, task start-up through the
Execution API). These tests start the deployment of ``scripts/deployment.py`` (LocalExecutor,
SQLite, all on 127.0.0.1) and drive it through the REST API, as a user does.

* ``test_dags_on_a_real_deployment`` (``make test``, a few minutes): a burst of saves; the
  continuous DAG makes one run per step (at least 3 consecutive runs), the event-driven DAG
  evaluates the whole burst, GC runs (and is triggered by hand) while evaluations are in flight.
* ``test_soak`` (``make test-long``): ~30 steps in bursts, both evaluation DAGs, GC every minute.

Both check through the API: every committed step evaluated exactly once by each evaluation DAG,
no run failed, GC deleted no step before both DAGs had evaluated it, and no successful evaluate
task's log (read through the REST API, as the UI shows it) has an ERROR line: TensorFlow's native
start-up lines (cuInit, "Could not find cuda drivers") reach it at their true level.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from deployment import EVAL_TASKS, Deployment, Ledger, read_ledger, triggerer_blocks  # noqa: E402

pytestmark = [pytest.mark.airflow, pytest.mark.tf, pytest.mark.real]

EVAL_DAGS = ("tf_ckpt_evaluate_each_step", "tf_ckpt_event_driven")
ALL_DAGS = ("tf_ckpt_train_demo", *EVAL_DAGS, "tf_ckpt_gc")
GC_TIGHT = {"keep_last": 1, "keep_best": 0, "keep_every_steps": 1000}  # deletes all it may


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(
        root=tmp_path / "deployment", poll_interval=2.0, extra_env={"TF_CKPT_DEMO_GC_SCHEDULE": "* * * * *"}
    )
    dep.prepare()
    try:
        dep.start()
        dep.wait_dags(ALL_DAGS)
        yield dep
    finally:
        dep.stop()
        assert not dep.procs


def _train(dep: Deployment, conf: dict[str, Any], timeout: float = 900) -> str:
    run_id = dep.trigger("tf_ckpt_train_demo", conf)
    run = dep.wait_run("tf_ckpt_train_demo", run_id, timeout)
    assert run["state"] == "success", dep.log_tail("scheduler")
    return run_id


def _wait_all_evaluated(dep: Deployment, timeout: float) -> Ledger:
    deadline = time.monotonic() + timeout
    while True:
        ledger = read_ledger(dep)
        done = all(ledger.count(d, s) >= 1 for d in EVAL_DAGS for s in ledger.committed())
        event_idle = all(r["state"] in ("success", "failed") for r in ledger.runs["tf_ckpt_event_driven"])
        # one successful continuous run per committed step: its last run has committed too
        cont_ok = sum(r["state"] == "success" for r in ledger.runs["tf_ckpt_evaluate_each_step"])
        if (done and event_idle and cont_ok >= len(ledger.committed())) or ledger.failed_runs():
            time.sleep(5)  # let a run that is about to start show up (a second evaluation)
            return read_ledger(dep)
        if time.monotonic() > deadline:
            missing = {d: [s for s in ledger.committed() if not ledger.count(d, s)] for d in EVAL_DAGS}
            pytest.fail(f"not evaluated after {timeout:.0f} s: {missing}\n{dep.log_tail('scheduler')}")
        time.sleep(3)


def task_log(dep: Deployment, dag_id: str, ti: dict[str, Any]) -> list[dict[str, Any]]:
    """A task instance's log lines (the structured records the UI shows), from the REST API."""
    path = (
        f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(ti['dag_run_id'], safe='')}/taskInstances/"
        f"{ti['task_id']}/logs/{ti['try_number']}"
    )
    body = dep.api("GET", path, full_content="true", map_index=ti.get("map_index", -1))
    content = body.get("content") or []
    return [c for c in content if isinstance(c, dict)]


def evaluate_log_errors(dep: Deployment, ledger: Ledger) -> tuple[int, list[str]]:
    """``(successful evaluate tasks read, their ERROR/CRITICAL lines)`` for every evaluation DAG."""
    read, errors = 0, []
    for dag, task_id in EVAL_TASKS.items():
        for r in ledger.runs.get(dag, []):
            for ti in dep.task_instances(dag, r["dag_run_id"]):
                if ti["task_id"] != task_id or ti["state"] != "success":
                    continue
                lines = task_log(dep, dag, ti)
                assert any(str(x.get("event", "")).startswith("Restoring ") for x in lines), (
                    f"not the evaluate task's log ({dag} {r['dag_run_id']}): {lines[:5]}"
                )
                read += 1
                where = f"{dag} {r['dag_run_id']} {task_id}[{ti.get('map_index', -1)}]"
                errors += error_lines(where, lines)
    return read, errors


def error_lines(where: str, lines: list[dict[str, Any]]) -> list[str]:
    """The ERROR/CRITICAL lines of a task log (as the UI shows it), each prefixed with ``where``."""
    return [
        f"{where}: {x.get('event')}"
        for x in lines
        if str(x.get("level", "")).lower() in ("error", "critical", "fatal")
    ]


def task_log_errors(dep: Deployment, dag: str, run_id: str, task_id: str) -> list[str]:
    """The ERROR/CRITICAL lines of one successful task's log, as the UI shows it."""
    tis = [ti for ti in dep.task_instances(dag, run_id) if ti["task_id"] == task_id]
    assert tis and all(ti["state"] == "success" for ti in tis), tis
    return [line for ti in tis for line in error_lines(f"{dag} {run_id} {task_id}", task_log(dep, dag, ti))]


def _gc_during_evaluation(dep: Deployment, timeout: float = 600) -> None:
    """Trigger GC (deleting all it may) as soon as an evaluation is in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for dag in EVAL_DAGS:
            for r in dep.runs(dag):
                if r["state"] == "running" and any(
                    ti["state"] == "running" and ti["task_id"].endswith("evaluate")
                    for ti in dep.task_instances(dag, r["dag_run_id"])
                ):
                    dep.trigger("tf_ckpt_gc", GC_TIGHT)
                    return
        time.sleep(2)
    pytest.fail("no evaluation was seen in flight")


@pytest.mark.timeout(2400)  # a few minutes on a quiet 2-core machine; far more on a busy one
def test_dags_on_a_real_deployment(deployment: Deployment) -> None:
    dep = deployment
    for dag in (*EVAL_DAGS, "tf_ckpt_gc"):  # before anything is trained: GC must not fail
        dep.unpause(dag)
    dep.unpause("tf_ckpt_train_demo")
    train_run = _train(dep, {"steps": 6, "save_every": 2})  # a burst: ckpt-2, -4, -6
    _gc_during_evaluation(dep)
    ledger = _wait_all_evaluated(dep, timeout=1500)

    assert ledger.saved == [2, 4, 6]
    assert ledger.problems(EVAL_DAGS) == []
    cont = [r for r in ledger.runs["tf_ckpt_evaluate_each_step"] if r["state"] == "success"]
    assert len(cont) >= 3, "the continuous DAG kept making runs"
    gc_runs = ledger.runs["tf_ckpt_gc"]
    assert gc_runs and all(r["state"] == "success" for r in gc_runs), gc_runs
    read, errors = evaluate_log_errors(dep, ledger)
    assert read >= 2 * len(ledger.committed()) and errors == [], errors[:20]
    # the training task too (TF's no-GPU lines came through stderr at ERROR)
    assert task_log_errors(dep, "tf_ckpt_train_demo", train_run, "train") == []
    print("triggerer:", triggerer_blocks(dep))


@pytest.mark.long
@pytest.mark.timeout(7200)
def test_soak(deployment: Deployment) -> None:
    """~30 steps in bursts, both evaluation DAGs, GC every minute (and by hand during evaluation)."""
    dep = deployment
    for dag in (*EVAL_DAGS, "tf_ckpt_gc", "tf_ckpt_train_demo"):
        dep.unpause(dag)
    for burst in range(3):
        _train(dep, {"steps": 10, "save_every": 1, "corrupt_step": 15 if burst == 1 else 0})
        _gc_during_evaluation(dep, timeout=300)
        time.sleep(30)
    ledger = _wait_all_evaluated(dep, timeout=2400)
    assert len(ledger.saved) == 30 and ledger.corrupted == [15]
    assert ledger.problems(EVAL_DAGS) == []
    assert len([r for r in ledger.runs["tf_ckpt_gc"] if r["state"] == "success"]) >= 3
    read, errors = evaluate_log_errors(dep, ledger)
    assert read >= 2 * len(ledger.committed()) and errors == [], errors[:20]
    print("triggerer:", triggerer_blocks(dep))


@pytest.mark.timeout(2400)
def test_the_checkpoints_page_on_a_live_deployment(tmp_path: Path) -> None:
    """As a new user of ``make up``: train with a corrupt step, then in headless Chromium log in
    through the real login form, Browse > Checkpoints, and see the demo's dir with its steps, the
    metrics plot with the best step, the quarantined step and the promoted one. Also: no successful
    evaluate task's log has an ERROR line."""
    from tests.ui_server import chromium_driver, chromium_missing

    why = chromium_missing()
    if why:
        pytest.skip(why)
    dep = Deployment(root=tmp_path / "deployment", poll_interval=2.0)
    dep.prepare()
    try:
        dep.start()
        dep.wait_dags(ALL_DAGS)
        for dag in (*EVAL_DAGS, "tf_ckpt_gc", "tf_ckpt_train_demo"):  # the README's order
            dep.unpause(dag)
        _train(dep, {"steps": 6, "save_every": 2, "corrupt_step": 4})  # ckpt-2, -4 (corrupt), -6
        ledger = _wait_all_evaluated(dep, timeout=1500)
        assert ledger.corrupted == [4] and ledger.problems(EVAL_DAGS) == []
        losses = {s: ms[-1][1]["loss"] for s, ms in ledger.evaluations["tf_ckpt_evaluate_each_step"].items()}
        best = min(losses, key=losses.__getitem__)
        assert (dep.ckpt_dir / "ckpt-4.quarantine.json").exists()
        read, errors = evaluate_log_errors(dep, ledger)
        assert read >= 2 * len(ledger.committed()) and errors == [], errors[:20]
        driver = chromium_driver()
        try:
            _check_page(driver, dep, best, tmp_path)
        finally:
            driver.quit()
    finally:
        dep.stop()
        assert not dep.procs


def _check_page(driver: Any, dep: Deployment, best: int, tmp_path: Path) -> None:
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 120)
    driver.get(dep.url + "/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=username]"))).send_keys("admin")
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(dep.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
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
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dir option"))
    urls = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#dir option")]
    assert str(dep.ckpt_dir) in urls, urls
    if Select(driver.find_element(By.ID, "dir")).first_selected_option.text != str(dep.ckpt_dir):
        Select(driver.find_element(By.ID, "dir")).select_by_visible_text(str(dep.ckpt_dir))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steps[data-complete='1'] tbody tr[data-prefix]"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#plot circle.best"))
    rows = {
        r.get_attribute("data-prefix"): r for r in driver.find_elements(By.CSS_SELECTOR, "#steps tbody tr")
    }
    assert {p: r.get_attribute("data-status") for p, r in rows.items()} == {
        "ckpt-6": "committed",
        "ckpt-4": "quarantined",
        "ckpt-2": "committed",
    }
    assert "latest" in rows["ckpt-6"].text
    promoted = [p for p, r in rows.items() if r.find_elements(By.CSS_SELECTOR, ".badge.promoted")]
    assert promoted == [f"ckpt-{best}"], promoted
    assert rows[f"ckpt-{best}"].find_element(By.CSS_SELECTOR, ".badge.promoted").text == "best"
    assert driver.find_element(By.CSS_SELECTOR, "#plot circle.best").get_attribute("data-step") == str(best)
    assert (
        len(driver.find_elements(By.CSS_SELECTOR, "#plot circle.point")) == 2
    )  # the corrupt step: never evaluated
    shot = Path(os.environ.get("TF_CKPT_UI_LIVE_SCREENSHOT") or tmp_path / "checkpoints-live.png")
    driver.switch_to.default_content()
    assert driver.save_screenshot(str(shot))
    print("screenshot:", shot)
