"""The Django fleet-test app (tests/fleet/django_app.py) with ``/metrics`` mounted in front
of it by :func:`fleetcache.observe.metrics_middleware`, the way a Django project's wsgi.py
would, and the stats interval from ``FLEETCACHE_STATS_INTERVAL``.

    gunicorn -c deploy/gunicorn.conf.py tests.fleet.django_metrics_app:application
"""

from __future__ import annotations

import os

from django.conf import settings

from fleetcache.observe import metrics_middleware

from .django_app import application as django_application
from .django_app import cache

# Before the first request: Django builds its cache backends (and the FleetCache behind
# them) lazily, on first use in each worker.
settings.CACHES["default"]["OPTIONS"]["stats_interval"] = float(
    os.environ.get("FLEETCACHE_STATS_INTERVAL", "5"))

application = metrics_middleware(django_application, lambda: cache.cache)
