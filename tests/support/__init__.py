"""Helpers shared by the tests (as ``support``, tests/ is on their path) and bench/ (as ``tests.support``)."""
