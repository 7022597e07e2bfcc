"""The ``jetjax`` command: ``jetjax lens|bigrams|paths|attribute|search|diff|index|demo|bench ...``."""

from jetjax.cli.app import main

__all__ = ["main"]
