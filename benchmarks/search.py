"""Run the ``search`` benchmark from a checkout (the code: ``jetjax/suite/search.py``; ``--help`` for options)."""

from jetjax.suite.search import main

if __name__ == "__main__":
    main()
