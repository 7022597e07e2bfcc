"""jetjax: jet expansions of residual networks in JAX.

>>> import jetjax as jj
>>> import jax.numpy as jnp
>>> float(jj.jet(jnp.exp, jnp.float32(0.0), jnp.float32(1.0), order=2))  # 1 + 1 + 1/2
2.5
"""

from jetjax.expand import (Expansion, count_paths, expand, expand_all, expand_block, expand_decoder,
                           path_streams)
from jetjax.hf import from_pretrained, supported_model_types
from jetjax.jet import JetRuleError, jet
from jetjax.ngrams import (NGramTable, corpus_agreement, diff_tables, jet_bigrams, jet_skip_bigrams,
                           jet_trigrams, keyword_mass, ngram_dynamics)
from jetjax.lenses import LensResult, iterative_jet_lens, joint_jet_lens, logit_lens
from jetjax.attribution import PathAttribution, PathScores, path_attribution, reduce_paths
from jetjax.frozen import FrozenPaths, count_frozen_paths, frozen_path_attribution, frozen_path_streams
from jetjax.search import TopPaths, top_paths
from jetjax.ngrams import SweepSettings
from jetjax.spec import PathSpec
from jetjax.models.config import ModelConfig
from jetjax.models.model import Model
from jetjax.assets import load_default, load_shipped
from jetjax._compiled import clear_caches
from jetjax.adapters import LoraAdapter, init_lora, load_adapter, merge_adapter, save_adapter


__all__ = ["clear_caches", "load_default", "load_shipped", "jet_bigrams", "jet_trigrams", "jet_skip_bigrams", "NGramTable", "diff_tables", "keyword_mass", "ngram_dynamics",
           "corpus_agreement", "logit_lens", "iterative_jet_lens", "joint_jet_lens", "LensResult", "expand", "expand_all", "path_streams", "PathSpec", "reduce_paths", "PathScores", "path_attribution",
           "PathAttribution", "frozen_path_attribution", "frozen_path_streams", "count_frozen_paths", "FrozenPaths", "top_paths", "TopPaths",
           "SweepSettings", "count_paths", "expand_block", "expand_decoder", "Expansion", "jet", "JetRuleError", "from_pretrained", "supported_model_types", "Model", "ModelConfig",
           "LoraAdapter", "init_lora", "load_adapter", "merge_adapter", "save_adapter"]
__version__ = "0.1.0"
