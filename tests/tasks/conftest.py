"""Task tests run tiny models, on one thread (``one_thread`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _tiny_models_on_one_thread(one_thread):
    yield
