"""Run the ``lenses`` benchmark from a checkout (the code: ``jetjax/suite/lenses.py``; ``--help`` for options)."""

from jetjax.suite.lenses import main

if __name__ == "__main__":
    main()
