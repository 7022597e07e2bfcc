"""Run the ``study`` benchmark from a checkout (the code: ``jetjax/suite/study.py``; ``--help`` for options)."""

from jetjax.suite.study import main

if __name__ == "__main__":
    main()
