"""Run the ``paths`` benchmark from a checkout (the code: ``jetjax/suite/paths.py``; ``--help`` for options)."""

from jetjax.suite.paths import main

if __name__ == "__main__":
    main()
