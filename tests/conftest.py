"""Shared pytest setup: the repository root on sys.path (for ``tests.support``) and the
session-wide generated models folder."""

from __future__ import annotations

import pathlib
import sys

import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.models import shared_models_dir  # noqa: E402


@pytest.fixture(scope="session")
def models_dir() -> pathlib.Path:
    """Read-only folder with half_plus_two/{1,2} and embed/1 (see tests/support/models.py)."""
    return shared_models_dir()
