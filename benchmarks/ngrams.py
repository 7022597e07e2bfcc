"""Run the ``ngrams`` benchmark from a checkout (the code: ``jetjax/suite/ngrams.py``; ``--help`` for options)."""

from jetjax.suite.ngrams import main

if __name__ == "__main__":
    main()
