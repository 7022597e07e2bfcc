"""Run the ``real_model`` benchmark from a checkout (the code: ``jetjax/suite/real_model.py``; ``--help`` for options)."""

from jetjax.suite.real_model import main

if __name__ == "__main__":
    main()
