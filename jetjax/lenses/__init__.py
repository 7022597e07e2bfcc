"""Lenses: what the residual stream at each layer says about the next token (logit lens, jet lenses)."""

from jetjax.lenses.lens import (METRICS, LensResult, iterative_jet_lens, joint_jet_lens, logit_lens, row_labels,
                                token_texts)

__all__ = ["LensResult", "logit_lens", "iterative_jet_lens", "joint_jet_lens", "METRICS", "row_labels", "token_texts"]
