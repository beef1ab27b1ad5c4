"""Which dirs the Checkpoints page shows: read from the SERIALIZED example DAGs (as the api-server
has them in the metadata DB), with templated values rendered from the DAGs' Param defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_tf_ckpt.ui import sources

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def serialized_example_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict]]:
    """The repo's example DAGs, parsed with TF_CKPT_DEMO_DIR=tmp and serialized as the DB holds them."""
    import json

    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setenv("TF_CKPT_DEMO_DIR", str(tmp_path / "demo"))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    # through JSON, as the serialized_dag table stores it
    return [
        (dag_id, json.loads(json.dumps(DagSerialization.to_dict(dag)))["dag"])
        for dag_id, dag in sorted(bag.dags.items())
    ]


def test_example_dags_give_one_dir_with_the_gc_policies(serialized_example_dags, tmp_path: Path) -> None:
    notes: list[str] = []
    dirs = sources.watched_dirs(serialized_example_dags, notes=notes)
    ckpt = str(tmp_path / "demo" / "checkpoints")
    assert [d.url for d in dirs] == [ckpt]
    (d,) = dirs
    assert d.prefix == "ckpt"
    who = " | ".join(d.used_by)
    for expected in (
        "tf_ckpt_evaluate_each_step.wait (CheckpointSensor)",
        "tf_ckpt_gc.retention (CheckpointRetentionOperator)",
        "tf_ckpt_event_driven (asset watcher)",
        "tf_ckpt_event_driven.check_and_evaluate.evaluate (EvaluateCheckpointOperator)",
    ):
        assert expected in who
    (spec,) = d.retention
    assert spec.label == "tf_ckpt_gc.retention"
    # rendered from the GC DAG's Param defaults, with their types
    assert spec.options == {
        "keep_last": 3,
        "keep_best": 2,
        "keep_every_steps": 10,
        "metric": "loss",
        "mode": "min",
        "pins": [],
        "unevaluated_max_age": 86400.0,
        "evaluator": "tf_ckpt_evaluate_each_step",
        "keep_unevaluated": ["tf_ckpt_evaluate_each_step", "tf_ckpt_event_driven"],
    }
    assert notes == []


def test_ui_dirs_are_added_once_and_get_the_default_connection(
    serialized_example_dags, tmp_path: Path
) -> None:
    ckpt = str(tmp_path / "demo" / "checkpoints")
    dirs = sources.watched_dirs(
        serialized_example_dags, sources.split_dirs(f"gs://b/x/, {ckpt}/\n/data/y"), default_conn_id="gcp"
    )
    assert [d.url for d in dirs] == [ckpt, "gs://b/x", "/data/y"]
    assert dirs[1].used_by == ["[tf_ckpt] ui_dirs"] and dirs[1].conn_id == "gcp"
    assert "[tf_ckpt] ui_dirs" in dirs[0].used_by
    assert len({d.id for d in dirs}) == 3 and all(len(d.id) == 12 for d in dirs)


def test_a_dir_that_needs_a_run_to_render_is_left_out_with_a_note() -> None:
    dag = {
        "params": [["d", {"__class": "airflow.sdk.definitions.param.Param", "default": "/p"}]],
        "tasks": [
            {
                "__type": "operator",
                "__var": {
                    "task_id": "v",
                    "task_type": "ValidateCheckpointOperator",
                    "_task_module": "airflow_tf_ckpt.operators.validate",
                    "ckpt_dir": "{{ ti.xcom_pull(task_ids='x') }}",
                },
            },
            {
                "__type": "operator",
                "__var": {
                    "task_id": "s",
                    "task_type": "CheckpointSensor",
                    "_task_module": "airflow_tf_ckpt.sensors.checkpoint",
                    "dir": "{{ params.d }}/run",
                    "conn_id": "my_gcs",
                },
            },
        ],
    }
    notes: list[str] = []
    dirs = sources.watched_dirs([("dag", dag)], notes=notes)
    assert [(d.url, d.conn_id) for d in dirs] == [("/p/run", "my_gcs")]
    assert len(notes) == 1 and "dag.v (ValidateCheckpointOperator)" in notes[0]


def test_render_is_sandboxed_and_keeps_types() -> None:
    assert sources.render("{{ params.n }}", {"n": 3}) == 3
    assert sources.render("gs://b/{{ params.run }}/ckpt", {"run": "r7"}) == "gs://b/r7/ckpt"
    with pytest.raises(sources.Unresolved):
        sources.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})
    with pytest.raises(sources.Unresolved):
        sources.render("{{ var.value.x }}", {})


def test_first_paint_from_the_state_file_pages_newest_first() -> None:
    """The first paint of a dir never listed: one page of rows (newest step first, with TF's save
    times), the total and the latest from the state file alone; other bases are left out."""
    from airflow_tf_ckpt.core.formats.state import parse_state
    from airflow_tf_ckpt.ui import views

    names = [f"ckpt-{i}" for i in (3, 1, 10, 2)] + ["other-7"]
    text = 'model_checkpoint_path: "/some/dir/ckpt-10"\n' + "".join(
        f'all_model_checkpoint_paths: "/some/dir/{n}"\n' for n in names
    )
    text += "".join(f"all_model_checkpoint_timestamps: {100.0 + i}\n" for i in range(len(names)))
    state = parse_state(text, "checkpoint")
    out = views.preliminary(state, "ckpt", offset=1, limit=2)
    assert out["preliminary"] and out["total"] == 4 and out["offset"] == 1 and out["limit"] == 2
    assert [(r["prefix"], r["saved"]) for r in out["rows"]] == [("ckpt-3", 100.0), ("ckpt-2", 103.0)]
    assert out["summary"] == {
        "steps": 4,
        "counts": {"committed": 4},
        "bytes": None,
        "latest": "ckpt-10",
        "problems": [],
        "problem_count": 0,
    }
    first = views.preliminary(state, "ckpt", 0, 50)["rows"][0]
    assert first["prefix"] == "ckpt-10" and first["latest"] and first["size"] is None
    assert views.preliminary(None, "ckpt")["total"] == 0


def test_the_first_paint_does_not_start_a_listing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A dir never listed: the first paint's requests (``wait=false``) answer at once and start no
    listing (it would share the CPU with them); the page's next request, which waits, lists it."""
    import time

    from airflow_tf_ckpt.ui import app

    listed: list[str] = []
    real = app.discover

    def counted(loc, prefix=None):  # the real discovery, counted
        listed.append(str(loc))
        return real(loc, prefix)

    monkeypatch.setattr(app, "discover", counted)
    d = sources.WatchedDir(url=str(tmp_path))
    app._hook(None).get_location(d.url)  # imported now, so that a listing would be quick
    listings = app._Listings()
    assert listings.get(d, wait=False) == (None, None)
    assert listings.get(d, wait=False) == (None, None)
    time.sleep(1.0)  # a listing started in the background would have run by now
    assert listed == []
    cdir, age = listings.get(d, wait=True)
    assert cdir is not None and cdir.steps == [] and age is not None and len(listed) == 1
    assert listings.get(d, wait=False)[0] is cdir  # kept: no new listing within the TTL
    assert len(listed) == 1


def test_the_page_is_one_request() -> None:
    """The page comes with its stylesheet and script inlined (no request for them before the first
    data request); the script is the shipped one, whole."""
    from importlib import resources

    from airflow_tf_ckpt.ui import app

    page = app._page()
    js = resources.files("airflow_tf_ckpt.ui").joinpath("static", "app.js").read_text("utf-8")
    assert 'href="static/' not in page and 'src="static/' not in page
    assert page.count("<script>") == 1 and js in page and "</script" not in js
    assert page.index('<table id="steps">') < page.index("<script>")  # the DOM is there when it runs
