"""Run the ``search`` benchmark from a checkout (the code: ``jetjax/bench/search.py``; ``--help`` for options)."""

from jetjax.bench.search import main

if __name__ == "__main__":
    main()
