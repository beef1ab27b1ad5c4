"""The Checkpoints page of the Airflow UI (an Airflow plugin: see :mod:`airflow_tf_ckpt.ui.plugin`).

``sources`` finds the checkpoint dirs a deployment's DAGs watch (from their serialized form) and
``views`` turns core results into the page's JSON; neither imports Airflow. ``app`` is the FastAPI
app (Airflow login and permissions on every route) and ``plugin`` registers it.
"""
