"""The template tags and the context processor, in each state."""

from __future__ import annotations

import time
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY
from django.template import Context, RequestContext, Template
from django.test import RequestFactory

from django_token_rotation import session as token_session
from django_token_rotation.context_processors import token_session as context_processor

ERROR = {
    "provider": "google",
    "code": "invalid_grant",
    "login_url": "/accounts/google/login/",
    "provider_name": "Google",
}


def request_with(summary: dict[str, Any] | None, *, user_id: str = "1") -> Any:
    request = RequestFactory().get("/inbox/?page=2")
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore()
    request.session[SESSION_KEY] = user_id
    if summary is not None:
        request.session[token_session.KEY] = summary
    return request


def summary(error: dict[str, Any] | None = None, user: str = "1") -> dict[str, Any]:
    return token_session.build(user, time.time() + 60, 1_900_000_000, error)


def render(source: str, request: Any) -> str:
    template = Template("{% load token_rotation %}" + source)
    return template.render(RequestContext(request, {}))


STATES = {
    "no session data": None,
    "all well": summary(),
    "error of another user": summary(ERROR, user="2"),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("tag", ["reauth_prompt", "reauth_redirect"])
def test_tags_render_nothing_when_all_is_well(state: str, tag: str) -> None:
    assert render(f"{{% {tag} %}}", request_with(STATES[state])).strip() == ""


def test_reauth_prompt_is_a_post_form_back_to_this_page() -> None:
    html = render("{% reauth_prompt %}", request_with(summary(ERROR)))
    assert 'role="alert"' in html
    assert 'method="post" action="/accounts/google/login/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'name="next" value="/inbox/?page=2"' in html
    assert 'name="process" value="login"' in html
    assert "Sign in again with Google" in html


def test_reauth_redirect_submits_itself_with_a_noscript_fallback() -> None:
    html = render("{% reauth_redirect %}", request_with(summary(ERROR)))
    assert '<form id="token-rotation-reauth-google"' in html
    # The id is escaped for JavaScript ("-" as \u002D), which the browser reads back.
    assert 'getElementById("token\\u002Drotation\\u002Dreauth\\u002Dgoogle").submit()' in html
    assert "<noscript>" in html and "<button" in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_error_tag_for_templates_without_the_context_processor() -> None:
    source = "{% token_rotation_error as error %}[{{ error }}]"
    assert render(source, request_with(summary(ERROR))) == "[RefreshAccessTokenError]"
    assert render(source, request_with(summary())) == "[]"


def test_tags_without_a_request_in_the_context() -> None:
    template = Template("{% load token_rotation %}{% reauth_prompt %}{% token_rotation_error %}")
    assert template.render(Context({})).strip() == ""


def test_prompt_template_is_overridable(tmp_path: Any, settings: Any) -> None:
    folder = tmp_path / "token_rotation"
    folder.mkdir()
    (folder / "reauth_prompt.html").write_text("CUSTOM {{ provider_name }} {{ action }}")
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [str(tmp_path), *settings.TEMPLATES[0]["DIRS"]]}
    ]
    html = render("{% reauth_prompt %}", request_with(summary(ERROR)))
    assert html == "CUSTOM Google /accounts/google/login/"


def test_context_processor_exposes_session_error() -> None:
    session: Any = context_processor(request_with(summary(ERROR)))["session"]
    assert session.error == "RefreshAccessTokenError"
    assert session.provider == "google"
    assert session.code == "invalid_grant"
    assert session.expires_at is not None and session.expires_at.year == 2030
    assert bool(session)


def test_context_processor_when_all_is_well() -> None:
    session: Any = context_processor(request_with(summary()))["session"]
    assert session.error == ""
    assert not session


def test_context_variable_name_is_configurable(settings: Any) -> None:
    settings.TOKEN_ROTATION_CONTEXT_NAME = "token_rotation"
    context = context_processor(request_with(summary(ERROR)))
    assert list(context) == ["token_rotation"]
