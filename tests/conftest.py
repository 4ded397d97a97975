import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory, so no test reads what another measured."""
    monkeypatch.setenv("EFFX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def quick_ceilings(monkeypatch):
    """Host ceilings measured with small sizes (the real measurement is the benchmark's job)."""
    from effx_serve import ceilings

    real = ceilings.measure
    calls = []

    def small(**_):
        calls.append(1)
        return real(matmul_size=128, copy_mib=4, repeats=2)

    monkeypatch.setattr(ceilings, "measure", small)
    return calls
