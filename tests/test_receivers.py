"""Signal receivers: a sign-in (or a connected or removed account) makes the next
request look at the database again."""

from __future__ import annotations

from importlib import import_module
from typing import Any

import pytest
from allauth.socialaccount.models import SocialAccount
from allauth.socialaccount.signals import social_account_removed
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.signals import user_logged_in
from django.test import RequestFactory

from django_token_rotation import session

pytestmark = pytest.mark.django_db


def signed_in_request(user: Any) -> Any:
    engine = import_module(django_settings.SESSION_ENGINE)
    request = RequestFactory().get("/")
    request.session = engine.SessionStore()
    request.session[SESSION_KEY] = str(user.pk)
    error = {"provider": "google", "code": "invalid_grant"}
    request.session[session.KEY] = session.build(str(user.pk), 2**40, None, error)
    request.user = user
    return request


def test_a_sign_in_forgets_the_summary(user: Any) -> None:
    request = signed_in_request(user)
    assert session.for_request(request)  # the error shows...
    user_logged_in.send(sender=type(user), request=request, user=user)
    assert session.KEY not in request.session  # ...until the user signed in again
    assert not session.for_request(request)


def test_a_removed_account_forgets_the_summary(user: Any) -> None:
    request = signed_in_request(user)
    account = SocialAccount.objects.create(user=user, provider="google", uid="g1")
    social_account_removed.send(sender=SocialAccount, request=request, socialaccount=account)
    assert session.KEY not in request.session


def test_a_signal_sent_without_a_request_is_ignored(user: Any) -> None:
    # Code outside a request (a shell, a script) sends them too.
    user_logged_in.send(sender=type(user), request=None, user=user)
