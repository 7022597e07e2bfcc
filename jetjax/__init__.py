"""jetjax: jet expansions of residual networks in JAX.

>>> import jetjax as jj
>>> import jax.numpy as jnp
>>> float(jj.jet(jnp.exp, jnp.float32(0.0), jnp.float32(1.0), order=2))  # 1 + 1 + 1/2
2.5
"""

# models and loading
from jetjax.models.config import ModelConfig
from jetjax.models.model import Model
from jetjax.io.hf import from_pretrained, supported_model_types
from jetjax.io.assets import load_default, load_shipped
from jetjax.io.adapters import LoraAdapter, init_lora, load_adapter, merge_adapter, save_adapter
# the jet operator
from jetjax.jet import JetRuleError, jet
# paths: expansions, frozen paths, search, attribution
from jetjax.paths.spec import PathSpec
from jetjax.paths.expand import (Expansion, count_paths, expand, expand_all, expand_block, expand_decoder,
                                 path_streams)
from jetjax.paths.attribution import PathAttribution, PathScores, path_attribution, reduce_paths
from jetjax.paths.frozen import FrozenPaths, count_frozen_paths, frozen_path_attribution, frozen_path_streams
from jetjax.paths.search import TopPaths, top_paths
# attribution graphs and circuits in the real model
from jetjax.paths.graph import AttributionGraph, attribution_graph
from jetjax.paths.ablate import Faithfulness, ablate, faithfulness
from jetjax.paths.circuit import Circuit, find_circuit
# lenses
from jetjax.lenses import LensResult, iterative_jet_lens, joint_jet_lens, logit_lens
# n-grams
from jetjax.ngrams import (NGramTable, SweepSettings, corpus_agreement, diff_tables, jet_bigrams, jet_skip_bigrams,
                           jet_trigrams, keyword_mass, ngram_dynamics)
# caches
from jetjax._internal.compiled import clear_caches
from jetjax._internal.compile_cache import enable_compile_cache

__all__ = [
    # models and loading
    "Model", "ModelConfig", "from_pretrained", "supported_model_types", "load_default", "load_shipped",
    "LoraAdapter", "init_lora", "load_adapter", "merge_adapter", "save_adapter",
    # the jet operator
    "jet", "JetRuleError",
    # paths
    "PathSpec", "Expansion", "expand", "expand_all", "expand_block", "expand_decoder", "path_streams", "count_paths",
    "PathAttribution", "PathScores", "path_attribution", "reduce_paths",
    "FrozenPaths", "frozen_path_attribution", "frozen_path_streams", "count_frozen_paths", "TopPaths", "top_paths",
    # attribution graphs and circuits
    "AttributionGraph", "attribution_graph", "ablate", "faithfulness", "Faithfulness", "Circuit", "find_circuit",
    # lenses
    "LensResult", "logit_lens", "iterative_jet_lens", "joint_jet_lens",
    # n-grams
    "NGramTable", "SweepSettings", "jet_bigrams", "jet_trigrams", "jet_skip_bigrams", "diff_tables", "keyword_mass",
    "ngram_dynamics", "corpus_agreement",
    # caches
    "clear_caches", "enable_compile_cache",
]
__version__ = "0.1.0"
