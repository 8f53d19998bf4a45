"""Where users already are: gunicorn hooks, the Flask extension, the Flask-Caching and
cachelib backend. Each module imports its framework; ``import fleetcache`` imports none."""
