"""Shared fixtures: the real imaging in ../shared/data and the SExtractor binary."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sextractor_binary() -> str:
    """Path of SExtractor 2.25 (``source-extractor`` or ``sex``)."""
    path = shutil.which("source-extractor") or shutil.which("sex")
    if path is None:
        pytest.skip("SExtractor binary not installed (apt-get install source-extractor)")
    return path


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    """Keep every test's products out of the repository and the user's config."""
    monkeypatch.setenv("GALSEG_WORK_DIR", str(tmp_path_factory.mktemp("work")))
    monkeypatch.delenv("GALSEG_CONFIG", raising=False)
    monkeypatch.setenv("HOME", os.environ.get("GALSEG_TEST_HOME", str(tmp_path_factory.mktemp("home"))))
