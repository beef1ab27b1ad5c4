"""Shared fixtures. Each fixture family lives in its own module under tests/fixtures/."""

import pytest

from tests.fixtures.tf_checkpoints import tf_available

pytest_plugins = [
    "tests.fixtures.gcs_emulator",
    "tests.fixtures.tf_checkpoints",
    "tests.fixtures.airflow_env",
    "tests.tf_oracle",
]

# Fixtures that run real TensorFlow (or keras): a test that uses one needs TF, whatever its own
# markers say, so it is marked `tf` here once instead of by hand in every file.
TF_FIXTURES = frozenset({"tf_checkpoints", "copy_variant", "tf_run", "tf_built"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TF_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tf)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("tf") is not None and not tf_available():
        pytest.skip("needs TensorFlow (the `tensorflow` extra)")
