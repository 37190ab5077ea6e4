import pytest


@pytest.fixture(autouse=True)
def _feature_cache_in_tmp(tmp_path, monkeypatch):
    """Feature extraction caches under the test's tmp dir, never in the user's home."""
    monkeypatch.setenv("REPDIAG_CACHE", str(tmp_path / "feature-cache"))
