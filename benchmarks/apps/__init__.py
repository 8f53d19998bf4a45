"""The Flask app, gunicorn settings and wrk script of the fleet benchmark (benchmarks/fleet.py)."""
