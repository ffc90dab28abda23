"""The fault drills share the integration tests' local HTTP API fixture."""

from tests.integration.conftest import api  # noqa: F401  (fixture)
