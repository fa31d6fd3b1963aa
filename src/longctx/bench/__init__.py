"""Benchmarks: time and peak memory of ops and mixers (``longctx bench``)."""
