"""Run the ``families`` benchmark from a checkout (the code: ``jetjax/suite/families.py``; ``--help`` for options)."""

from jetjax.suite.families import main

if __name__ == "__main__":
    main()
