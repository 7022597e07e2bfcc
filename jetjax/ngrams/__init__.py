"""Jet n-grams: the paper's data-free "global readout" of a language model.

Paths that move no information between positions (or, for trigrams, only through attention over a
short context) act as n-gram models read straight off the weights. This package sweeps them over
every context of the vocabulary, stores the tables, and compares them (diffs, keyword mass, agreement
with a corpus).
"""

from jetjax.ngrams.agreement import CorpusAgreement, CorpusBigrams, corpus_agreement, corpus_bigrams
from jetjax.ngrams.analysis import (KeywordMass, TableDiff, diff_tables, keyword_mass, load_keywords, ngram_dynamics,
                                    NGramDynamics, read_keywords)
from jetjax.ngrams.scorer import PATH_FORMS, check_paths, parse_path
from jetjax.ngrams.settings import SweepSettings
from jetjax.ngrams.store import SweepLockedError
from jetjax.ngrams.sweep import jet_bigrams, model_fingerprint, sweep_contexts
from jetjax.ngrams.table import NGramTable
from jetjax.ngrams.trigrams import bigram_candidates, candidate_contexts, jet_skip_bigrams, jet_trigrams

__all__ = ["jet_bigrams", "jet_trigrams", "jet_skip_bigrams", "candidate_contexts", "bigram_candidates",
           "sweep_contexts", "SweepSettings", "SweepLockedError", "NGramTable", "diff_tables", "TableDiff",
           "keyword_mass", "KeywordMass", "read_keywords", "load_keywords", "corpus_agreement", "CorpusAgreement",
           "corpus_bigrams", "CorpusBigrams", "parse_path", "check_paths", "PATH_FORMS", "model_fingerprint",
           "ngram_dynamics", "NGramDynamics"]
