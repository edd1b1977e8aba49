"""Benchmarks of django-token-rotation: ``python -m benchmarks.run`` (see
docs/performance.rst). Not tests: only a smoke run with tiny sizes is part of the suite."""
