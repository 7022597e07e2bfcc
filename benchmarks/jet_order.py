"""Run the ``jet_order`` benchmark from a checkout (the code: ``jetjax/suite/jet_order.py``; ``--help`` for options)."""

from jetjax.suite.jet_order import main

if __name__ == "__main__":
    main()
