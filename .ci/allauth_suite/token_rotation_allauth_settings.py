"""django-allauth's own test settings, with django-token-rotation installed as the README says.

Used by .ci/steps/70-allauth-suite.sh, which runs django-allauth's test suite
(the sdist of the installed version) with ``DJANGO_SETTINGS_MODULE`` set to
this module. It adds exactly the README's lines to allauth's ``regular``
project: the app, the middleware after ``AccountMiddleware``, the context
processor and ``SOCIALACCOUNT_STORE_TOKENS``.
"""

from __future__ import annotations

import copy

from tests.projects.regular.settings import *  # noqa: F403
from tests.projects.regular.settings import INSTALLED_APPS, MIDDLEWARE, TEMPLATES

INSTALLED_APPS = (*INSTALLED_APPS, "django_token_rotation")

MIDDLEWARE = (*MIDDLEWARE, "django_token_rotation.middleware.TokenRefreshMiddleware")

TEMPLATES = copy.deepcopy(TEMPLATES)
TEMPLATES[0]["OPTIONS"]["context_processors"] = [
    *TEMPLATES[0]["OPTIONS"]["context_processors"],
    "django_token_rotation.context_processors.token_session",
]

SOCIALACCOUNT_STORE_TOKENS = True
