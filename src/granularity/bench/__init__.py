"""Performance benchmarks (``granularity bench``): every figure is a ratio of two measurements
taken side by side in one process, interleaved and repeated (medians), so that it survives a
loaded machine. Entry point: :func:`granularity.bench.run.run_benchmarks`; figures and targets
in ``benchmarks/README.md``."""
