"""A custom user model with a UUID primary key, for the ``custom_user`` test shape.

Installed (and ``AUTH_USER_MODEL = "uuid_user.User"``) only in that shape: beside
``auth.User`` its groups and permissions would clash.
"""
