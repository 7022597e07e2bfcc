"""Run the ``real_model`` benchmark from a checkout (the code: ``jetjax/bench/real_model.py``; ``--help`` for options)."""

from jetjax.bench.real_model import main

if __name__ == "__main__":
    main()
