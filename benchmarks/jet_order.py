"""Run the ``jet_order`` benchmark from a checkout (the code: ``jetjax/bench/jet_order.py``; ``--help`` for options)."""

from jetjax.bench.jet_order import main

if __name__ == "__main__":
    main()
