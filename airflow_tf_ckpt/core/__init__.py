"""The checkpoint core: formats, discovery, verification, retention planning and promotion.

Pure Python over fsspec. It imports neither Airflow nor TensorFlow.
"""
