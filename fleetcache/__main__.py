"""``python -m fleetcache``: the same CLI as the ``fleetcache`` command."""

import sys

from .cli import main

sys.exit(main())
