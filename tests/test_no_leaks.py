"""No token value in error pages, responses or reprs, whatever fails.

Every test here also runs under ``hidden_secrets``, which fails it if any log
record (all loggers, all levels) contains a token or a client secret.
"""

from __future__ import annotations

from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from django.test import Client
from django.urls import path

from django_token_rotation import client as token_client
from django_token_rotation import get_access_token, providers
from django_token_rotation.models import RefreshEvent, TokenState
from django_token_rotation.rotation import check_user_tokens
from django_token_rotation.session import for_request
from tests.helpers import SECRETS, MakeToken
from tests.scripted_server import ScriptedServer, tokens
from tests.urls import urlpatterns as base_urlpatterns

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hidden_secrets")]


def api_view(request: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"token_tail": get_access_token(request.user, "fake")[-4:]})


urlpatterns = [path("use-token/", api_view), *base_urlpatterns]


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked"


@pytest.mark.urls("tests.test_no_leaks")
@pytest.mark.parametrize("where", ["parser", "requests"])
def test_debug_error_page_hides_tokens(
    where: str,
    settings: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug deep in a refresh, with DEBUG on: Django's technical 500 page lists
    every frame's local variables. None may show a token or the client secret."""
    settings.DEBUG = True
    make_token(expires_in=-5)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    if where == "parser":
        monkeypatch.setattr(token_client, "_validated", boom)
    else:  # inside the HTTP call itself, where the form with the refresh token lives
        monkeypatch.setattr("requests.Session.send", boom)
    browser = Client(raise_request_exception=False)
    browser.force_login(user)
    response = browser.get("/use-token/", headers={"Accept": "text/html"})

    html = response.content.decode()
    # The page is there, with the frames from the view down to our entry point...
    assert response.status_code == 500
    assert "TokenRefreshUnavailable" in html and "api_view" in html
    # ...and none below it, where tokens are local variables.
    assert "_refresh_holding" not in html and "refresh_token_grant" not in html
    assert_clean(html)


def test_reprs_and_strs_of_our_objects(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    rf: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    token = make_token(expires_in=-5)
    scripted.script(tokens())
    with django_capture_on_commit_callbacks(execute=True):  # the history is written on commit
        [check] = check_user_tokens(user.pk)
    token.refresh_from_db()
    endpoint = providers.resolve(token)
    answer = token_client.parse_token_response(
        endpoint, 200, "application/json", b'{"access_token": "new-access"}'
    )
    objects: list[Any] = [
        check,
        endpoint,
        answer,
        TokenState.objects.get(),
        *RefreshEvent.objects.all(),
        token,
        for_request(rf.get("/")),
    ]
    assert_clean(*(repr(o) for o in objects), *(str(o) for o in objects))
    assert RefreshEvent.objects.exists()
