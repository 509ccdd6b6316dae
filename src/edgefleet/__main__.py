"""``python -m edgefleet`` is the ``edgefleet`` command."""

import sys

from edgefleet.cli import main

sys.exit(main())
