"""Fixtures of the panel's tests: tiny-bert's layers, read once per test module."""

from __future__ import annotations

import pytest

from panel_helpers import MODEL
from workbench.ui.model_layers import ModelLayers


@pytest.fixture(scope="module")
def tiny_layers() -> ModelLayers:
    return ModelLayers.load(MODEL)
