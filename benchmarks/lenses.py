"""Run the ``lenses`` benchmark from a checkout (the code: ``jetjax/bench/lenses.py``; ``--help`` for options)."""

from jetjax.bench.lenses import main

if __name__ == "__main__":
    main()
