"""Fault-injection tests: a TCP proxy between fleetcache and a private server breaks the link."""
