"""``token_session``: puts the Auth.js-style ``session`` object in every template context.

``{{ session.error }}`` is ``"RefreshAccessTokenError"`` once a refresh failed for
good; ``{{ session.provider }}`` and ``{{ session.expires_at }}`` tell which
provider and when the access token expires. The variable name is
``TOKEN_ROTATION_CONTEXT_NAME``. Reading it costs no query: the middleware
keeps what it needs in the session.
"""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from . import session
from .conf import app_settings


def token_session(request: HttpRequest) -> dict[str, object]:
    return {app_settings.CONTEXT_NAME: SimpleLazyObject(lambda: session.for_request(request))}
