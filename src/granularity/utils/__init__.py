"""Shared low-level helpers: config handling, run records, statistics, atomic I/O."""
