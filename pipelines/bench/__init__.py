"""Benchmarks (``sma-guide bench ...``): quality, speed, memory, precision, the spectral terms' scale and the
shapes model's appearance; their measurements are in RESULTS.md beside this file."""
