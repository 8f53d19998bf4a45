"""``python -m fleetcache demo``."""

import sys

from .demo import main

sys.exit(main())
