"""The embedded server: a private Redis-compatible process for single-box use and tests."""

from .embedded import EmbeddedServer, find_server_binary, server_binaries

__all__ = ["EmbeddedServer", "find_server_binary", "server_binaries"]
