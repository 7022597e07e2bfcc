"""Run the ``paths`` benchmark from a checkout (the code: ``jetjax/bench/paths.py``; ``--help`` for options)."""

from jetjax.bench.paths import main

if __name__ == "__main__":
    main()
