"""Shared fixtures. Each fixture family lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.gcs_emulator",
    "tests.fixtures.tf_checkpoints",
    "tests.fixtures.airflow_env",
    "tests.tf_oracle",
]
