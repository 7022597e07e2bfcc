"""Run the ``ngrams`` benchmark from a checkout (the code: ``jetjax/bench/ngrams.py``; ``--help`` for options)."""

from jetjax.bench.ngrams import main

if __name__ == "__main__":
    main()
