"""Run the ``families`` benchmark from a checkout (the code: ``jetjax/bench/families.py``; ``--help`` for options)."""

from jetjax.bench.families import main

if __name__ == "__main__":
    main()
