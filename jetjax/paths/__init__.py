"""Paths: the one label grammar, path specs, the plan of component order, Algorithm 1/2 (``expand``),
frozen paths, path search, chunked reductions, attribution and their result types."""
