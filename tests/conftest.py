"""Shared test fixtures: paths to the real data beside the project, and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SSTEM = SHARED_DATA / "sstem_drosophila_vnc"


@pytest.fixture(scope="session")
def sstem_dir() -> Path:
    """The real ssTEM sections (../shared/data/sstem_drosophila_vnc); skips when the folder is absent."""
    if not (SSTEM / "raw").is_dir():
        pytest.skip(f"real ssTEM data not found at {SSTEM} (../shared/data beside the project)")
    return SSTEM
