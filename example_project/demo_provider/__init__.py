"""The demo's OAuth2 / OpenID Connect provider: django-oauth-toolkit, on its own
port, with its own settings and database. It stands in for Google, Okta, Keycloak..."""
