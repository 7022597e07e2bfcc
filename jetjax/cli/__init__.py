"""The ``jetjax`` command:
``jetjax lens|bigrams|paths|attribute|search|graph|circuit|diff|index|agree|train|bench|demo ...``

One module per subcommand (its options and its work); :mod:`jetjax.cli.common` holds what they share
and :mod:`jetjax.cli.app` assembles the parser."""

from jetjax.cli.app import main

__all__ = ["main"]
