"""``python -m jetjax``: the same as the ``jetjax`` command."""

import sys

from jetjax.cli.app import main

sys.exit(main())
