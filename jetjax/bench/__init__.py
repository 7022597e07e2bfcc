"""The benchmark suite, inside the package so that ``jetjax bench`` runs from an installed wheel.

Each module is one benchmark with a ``main()`` (run ``python -m jetjax.bench.<name> --help``); the
scripts in a checkout's ``benchmarks/`` call them. Results go to ``JETJAX_BENCH_RESULTS`` when set
(``jetjax bench --out``), else to ``benchmarks/results/`` in a checkout, else ``./jetjax-bench/``.
Several of them compare against torch, which they import when they run (a test-time dependency).
"""
