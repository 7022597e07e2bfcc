"""Run the ``circuits`` study from a checkout (the code: ``jetjax/studies/circuits.py``; ``--help`` for options)."""

from jetjax.studies.circuits import main

if __name__ == "__main__":
    main()
