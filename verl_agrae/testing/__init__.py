"""Helpers for tests, benchmarks and smoke runs that must not download anything."""
