import pytest
import torch


@pytest.fixture(autouse=True)
def _feature_cache_in_tmp(tmp_path, monkeypatch):
    """repdiag's cache (extracted features, any dataset download) is under the test's tmp dir,
    never in the user's home."""
    monkeypatch.setenv("REPDIAG_CACHE", str(tmp_path / "feature-cache"))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (thread start-up dominates, and a busy machine
    makes it worse); the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
