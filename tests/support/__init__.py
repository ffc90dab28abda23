"""Helpers shared by the test suites (real servers on temp dirs and free ports)."""
