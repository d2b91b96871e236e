"""Side-by-side speed measurements, written as JSON (run them as modules, e.g. ``python -m benchmarks.baselines``)."""
