"""Debian's glewlwyd as a real OpenID Connect provider for the tests.

``fixture.py`` starts one glewlwyd per pytest process (a session fixture) with
a throw-away SQLite database, and configures it through its admin API: an
OpenID Connect plugin with one-use refresh tokens, a confidential client and
users. ``glewlwyd.conf`` is the configuration template it writes.
"""
