"""``python -m jetjax``: the same as the ``jetjax`` command."""

import sys

from jetjax.cli import main

sys.exit(main())
