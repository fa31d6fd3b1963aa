"""Command-line interface: ``longctx arena | report | bench | list``."""
