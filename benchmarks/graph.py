"""Run the ``graph`` benchmark from a checkout (the code: ``jetjax/bench/graph.py``; ``--help`` for options)."""

from jetjax.bench.graph import main

if __name__ == "__main__":
    main()
