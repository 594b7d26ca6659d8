"""Helpers shared by the test suites: real processes (procs) and generated models (models).

Import as ``tests.support.procs`` / ``tests.support.models``; tests/conftest.py puts the
repository root on sys.path. Nothing here imports TensorFlow.
"""
