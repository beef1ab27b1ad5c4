"""airflow-tf-ckpt: manage the whole life of TensorFlow checkpoints from Apache Airflow 3.

The pure core (``airflow_tf_ckpt.core``) imports neither Airflow nor TensorFlow. The Airflow
adapters live in ``hooks``, ``sensors``, ``triggers`` and ``operators``; TensorFlow is imported
lazily, only by ``airflow_tf_ckpt.tf_runtime``.
"""

__version__ = "0.1.0"
