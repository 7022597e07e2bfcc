"""Run the ``study`` benchmark from a checkout (the code: ``jetjax/studies/faithfulness.py``; ``--help`` for options)."""

from jetjax.studies.faithfulness import main

if __name__ == "__main__":
    main()
