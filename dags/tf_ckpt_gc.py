"""Hourly checkpoint retention (garbage collection) of the demo's checkpoint dir.

``tf_ckpt_gc`` runs :class:`CheckpointRetentionOperator` every hour (``TF_CKPT_DEMO_GC_SCHEDULE``
overrides it), one run at a time. It keeps every step that an evaluation DAG of this deployment
has not evaluated yet (``keep_unevaluated``, for at most a day after its save), and a dir that does
not exist yet (nothing trained) is nothing to do, not a failure. It keeps the
3 newest steps, the 2 best by ``loss`` (as ``tf_ckpt_evaluate_each_step`` measured it), every 10th step, the newest
``.meta`` and any promoted, pinned, quarantined or LEASED step (an evaluation in progress), and
deletes the rest. The state file is rewritten before any file is deleted, so TF never names a
missing step. Trigger it with ``{"dry_run": true}`` to only log the plan.

Params: ``ckpt_dir`` (default ``$TF_CKPT_DEMO_DIR/checkpoints``; ``gs://`` works unchanged),
``keep_last``, ``keep_best``, ``keep_every_steps``, ``dry_run``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from airflow_tf_ckpt.examples import settings
from airflow_tf_ckpt.operators import CheckpointRetentionOperator

with DAG(
    dag_id="tf_ckpt_gc",
    description="Delete checkpoint steps that no retention policy keeps",
    schedule=settings.gc_schedule(),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["tf_ckpt", "example"],
    params={
        "ckpt_dir": Param(settings.ckpt_dir(), type="string", description="checkpoint dir (local or gs://)"),
        "keep_last": Param(3, type="integer", minimum=0),
        "keep_best": Param(2, type="integer", minimum=0),
        "keep_every_steps": Param(10, type="integer", minimum=1),
        "dry_run": Param(False, type="boolean"),
    },
    render_template_as_native_obj=True,  # ints stay ints, dry_run stays a bool
    doc_md=__doc__,
) as dag:
    CheckpointRetentionOperator(
        task_id="retention",
        ckpt_dir="{{ params.ckpt_dir }}",
        prefix=settings.BASE,
        keep_last="{{ params.keep_last }}",
        keep_best="{{ params.keep_best }}",
        metric=settings.METRIC,
        mode=settings.MODE,
        evaluator=settings.PROMOTING_EVALUATOR,  # keep_best ranks by this DAG's metrics
        keep_unevaluated=list(settings.EVALUATORS),  # never delete a step one of them still owes
        unevaluated_max_age=settings.UNEVALUATED_MAX_AGE,
        keep_every_steps="{{ params.keep_every_steps }}",
        dry_run="{{ params.dry_run }}",
        conn_id=settings.conn_id(),
    )
