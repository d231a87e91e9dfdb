"""Defaults the service's extensions and the command line share, in a module that imports nothing: the
CLI reads where things are without loading a component."""

ADMIN_ENDPOINT = "127.0.0.1:13133"  # the admin API and the health check (one listener)
