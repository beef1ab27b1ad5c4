"""Example training and evaluation code shared by the example DAGs, the Airflow demo and the tests.

Every module here imports TensorFlow lazily, inside functions, so that importing it (for example
from a DAG file at parse time) stays cheap.
"""
