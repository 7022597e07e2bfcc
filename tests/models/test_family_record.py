"""The Family contract: malformed records are refused with a clear error, registered ones are complete."""

import dataclasses

import pytest
from flax import nnx

from jetjax.models import FAMILIES, Family, ModelConfig, gpt2, register
from jetjax.models.hf_config import ConfigKeys
from jetjax.models.model import abstract_params


def _gpt2(**changes) -> Family:
    return dataclasses.replace(gpt2.FAMILY, **changes)


class NotResidual(nnx.Module):
    pass


@pytest.mark.parametrize("changes, error, match", [
    (dict(name=""), TypeError, "name must be a non-empty str"),
    (dict(config_keys={}), ValueError, "config_keys must map at least one model_type"),
    (dict(config_keys={"": gpt2.FAMILY.config_keys["gpt2"]}), ValueError, "non-empty strings, got ''"),
    (dict(config_keys={"gpt2x": {"handled": set()}}), TypeError, r"config_keys\['gpt2x'\] must be a ConfigKeys"),
    (dict(config_from_hf=None), TypeError, "config_from_hf must be callable"),
    (dict(weight_map={"wte.weight": (("wte",), False)}), TypeError, "weight_map must be callable"),
    (dict(module=NotResidual), TypeError, "module must be a ResidualModule subclass"),
    (dict(module=gpt2), TypeError, "module must be a ResidualModule subclass"),
    (dict(strip_prefixes="transformer."), TypeError, "strip_prefixes must be a tuple of non-empty strings"),
    (dict(ignored_tensors=[".attn.bias"]), TypeError, "ignored_tensors must be a tuple of non-empty strings"),
    (dict(ignored_tensors=("",)), TypeError, "ignored_tensors must be a tuple of non-empty strings"),
])
def test_malformed_family_is_refused(changes, error, match):
    with pytest.raises(error, match=match):
        register(_gpt2(**{"name": "gpt2_copy", **changes}))


def test_register_refuses_duplicates_and_non_records():
    before = dict(FAMILIES)
    with pytest.raises(TypeError, match="register expects a Family record, got module"):
        register(gpt2)  # the family file, not its record
    with pytest.raises(ValueError, match=r"model type\(s\) \['gpt2'\] are registered already \(by family 'gpt2'\)"):
        register(_gpt2(name="gpt2_copy"))
    fresh = {"gpt2_fresh": ConfigKeys(frozenset(), frozenset())}
    with pytest.raises(ValueError, match="a family named 'gpt2' is registered already"):
        register(_gpt2(config_keys=fresh))
    assert dict(FAMILIES) == before  # refused records leave the registry as it was
    with pytest.raises(TypeError):
        FAMILIES["gpt2_fresh"] = _gpt2(name="gpt2_fresh", config_keys=fresh)  # read-only: only register adds


def test_config_keys_are_read_only():
    with pytest.raises(TypeError):
        gpt2.FAMILY.config_keys["gpt2_fresh"] = ConfigKeys(frozenset(), frozenset())


def test_every_registered_family_is_complete():
    assert {"gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "olmo"} <= set(FAMILIES)
    for model_type, family in FAMILIES.items():
        assert isinstance(family, Family), model_type
        assert model_type in family.config_keys, (model_type, family.name)
        assert all(FAMILIES[t] is family for t in family.config_keys), family.name
    assert len({f.name for f in FAMILIES.values()}) == len(set(FAMILIES.values()))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_weight_map_covers_exactly_the_module_params(model_type):
    """``config_from_hf`` names the model type, and ``weight_map`` targets every parameter of ``module``
    once, with the right shape (with the transpose flag applied), and nothing else."""
    family = FAMILIES[model_type]
    config = family.config_from_hf({"model_type": model_type})  # the parser's defaults
    assert isinstance(config, ModelConfig) and config.arch == model_type
    windows = None if config.attn_windows is None else config.attn_windows[:2]
    config = dataclasses.replace(config, n_layers=2, attn_windows=windows,
                                 nope_layers=tuple(i for i in config.nope_layers if i < 2))
    for tied in (True, False):
        c = dataclasses.replace(config, tie_embeddings=tied)
        _, expected = abstract_params(lambda: family.module(c))
        mapping = family.weight_map(c)
        targets = [path for path, _ in mapping.values()]
        assert len(targets) == len(set(targets)), model_type
        assert set(targets) == set(expected), (model_type, tied, set(targets) ^ set(expected))
        assert all(isinstance(t, bool) for _, t in mapping.values())
        assert not any(name.startswith(family.strip_prefixes) for name in mapping), model_type
