"""Benchmarks of django-token-rotation: ``python -m benchmarks.run`` (see the README's
"Performance" section). Not tests: only a smoke run with tiny sizes is part of the suite."""
