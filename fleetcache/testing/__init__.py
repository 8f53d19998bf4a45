"""Helpers for testing code that uses fleetcache (dogpile ships ``dogpile.testing`` the
same way): a clock that moves only when told to."""

from .clock import FakeClock

__all__ = ["FakeClock"]
