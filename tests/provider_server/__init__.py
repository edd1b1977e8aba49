"""A real OAuth2 / OpenID Connect provider (django-oauth-toolkit) for the test suite.

It runs as a separate process: ``python -m tests.provider_server.serve`` (see
:mod:`tests.provider_server.serve`); tests start it through
:func:`tests.provider_server.fixture.start_provider`. Its Django settings
(:mod:`tests.provider_server.settings`) are unrelated to the test process's
``tests.settings``, so nothing here may be imported by code running under those.
"""
