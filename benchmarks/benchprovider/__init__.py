"""A plain OAuth 2.0 allauth provider (``bench``) whose token endpoint is the benchmark's
loopback server (``TOKEN_ROTATION_BENCH_TOKEN_URL``)."""
