"""The demo (``example_project/run_demo.py``), started for real and driven over HTTP.

``run_demo.py`` runs in a subprocess on free ports, its databases in a temporary
directory; this test signs in through the demo provider with ``requests``, as
a browser would (no browser needed), and watches the token rotate. The test
process itself never touches a database.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_DEMO = REPO_ROOT / "example_project" / "run_demo.py"
# Shorter than the demo's 30 s to keep the test quick; the site's leeway is 10 s
# either way, so a token is due 10 s after it was issued.
ACCESS_TOKEN_SECONDS = 20
STARTUP_TIMEOUT = 90.0
REQUEST_TIMEOUT = 30.0
DEMO_USER = ("demo", "demo-password")
PROMPT_FORM = ".token-rotation-reauth__form"  # {% reauth_prompt %}'s form


# --- a tiny browser: forms, fields, submit -------------------------------------


@dataclass
class Form:
    attrs: dict[str, str]
    inputs: list[dict[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = Form(values)
            self.forms.append(self._current)
        elif tag in ("input", "button") and self._current is not None:
            self._current.inputs.append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms(response: requests.Response) -> list[Form]:
    parser = _FormParser()
    parser.feed(response.text)
    return parser.forms


def find_form(response: requests.Response, form_id: str) -> Form:
    """The form with id ``form_id``, or the first with class ``form_id[1:]`` for ``.name``."""
    for form in forms(response):
        if form_id.startswith("."):
            if form_id[1:] in form.attrs.get("class", "").split():
                return form
        elif form.attrs.get("id") == form_id:
            return form
    raise AssertionError(f"no form {form_id} on {response.url} (HTTP {response.status_code})")


def submit(
    session: requests.Session,
    response: requests.Response,
    form_id: str,
    fields: dict[str, str] | None = None,
    button: str | None = None,
) -> requests.Response:
    """POST form ``form_id`` of the page in ``response``, as a browser would."""
    form = find_form(response, form_id)
    data: dict[str, str] = {}
    for element in form.inputs:
        name = element.get("name")
        if not name or (element.get("type") == "submit" and name != button):
            continue
        data[name] = element.get("value", "")
    data.update(fields or {})
    url = urljoin(response.url, form.attrs.get("action") or response.url)
    return session.post(url, data=data, timeout=REQUEST_TIMEOUT)


def text_of(response: requests.Response, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', response.text)
    assert match, f"no #{element_id} on {response.url}"
    return html.unescape(match.group(1)).strip()


def block(response: requests.Response, element_id: str) -> str | None:
    """The text of the card ``element_id``, or ``None`` when the page has none."""
    match = re.search(rf'<div class="card[^"]*" id="{element_id}">(.*?)</div>', response.text, re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))) if match else None


def userinfo(response: requests.Response) -> dict[str, Any]:
    match = re.search(r'<pre id="userinfo">(.*?)</pre>', response.text, re.S)
    assert match, f"no userinfo answer on the page; API error: {block(response, 'api-error')}"
    result: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return result


def refresh_due_at(response: requests.Response) -> float:
    """When the token on the dashboard is due (epoch seconds), from the page."""
    match = re.search(r'id="due-at" data-ms="(\d+)"', response.text)
    assert match, "the dashboard shows no refresh time"
    return int(match.group(1)) / 1000


def wait_until_due(response: requests.Response) -> None:
    time.sleep(max(0.0, refresh_due_at(response) - time.time()) + 0.5)


# --- the demo process ------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    site_url: str
    provider_url: str
    log: Path
    data_dir: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stored_tokens(self) -> list[str]:
        """Every access and refresh token the site holds now, read from its database
        file (read-only), to check that no page shows one."""
        uri = f"file:{self.data_dir / 'demo-site.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            rows = db.execute("SELECT token, token_secret FROM socialaccount_socialtoken")
            return [value for row in rows for value in row if value]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_demo(tmp_path: Path, access_token_seconds: int) -> Iterator[Demo]:
    """``run_demo.py`` on free ports, its data in ``tmp_path``; stopped as a user would."""
    site_port, provider_port = _free_ports(2)
    log = tmp_path / "run_demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # this process's settings are not the demo's
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(RUN_DEMO),
                f"--site-port={site_port}",
                f"--provider-port={provider_port}",
                f"--data-dir={tmp_path / 'data'}",
                f"--access-token-seconds={access_token_seconds}",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: whatever happens, the cleanup below reaches
            # the two servers too.
            start_new_session=True,
        )
    handle = Demo(
        f"http://127.0.0.1:{site_port}", f"http://127.0.0.1:{provider_port}", log, tmp_path / "data"
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "The demo is running" not in handle.output():
            if process.poll() is not None:
                pytest.fail(f"run_demo.py exited with {process.returncode}:\n{handle.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"run_demo.py not ready in {STARTUP_TIMEOUT} s:\n{handle.output()}")
            time.sleep(0.1)
        yield handle
        # The way a user stops it (Ctrl-C; SIGTERM goes the same way): a clean exit.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, handle.output()
        deadline = time.monotonic() + 10
        while not (_port_free(site_port) and _port_free(provider_port)):
            assert time.monotonic() < deadline, "a demo server outlived run_demo.py"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path, ACCESS_TOKEN_SECONDS) as handle:
        yield handle


# --- the test --------------------------------------------------------------------


def sign_in(
    session: requests.Session,
    demo: Demo,
    page: requests.Response,
    form_id: str = "signin-form",
) -> requests.Response:
    """From a page with a sign-in button to the dashboard, through the provider."""
    response = submit(session, page, form_id)
    assert response.status_code == 200, response.text[:2000]
    if response.url.startswith(f"{demo.provider_url}/accounts/login/"):
        username, password = DEMO_USER
        response = submit(
            session, response, "login-form", {"username": username, "password": password}
        )
    assert response.url.startswith(f"{demo.provider_url}/o/authorize/"), response.url
    assert "Token rotation demo site" in response.text
    response = submit(session, response, "authorizationForm", button="allow")
    assert response.status_code == 200, response.text[:2000]
    assert response.url == f"{demo.site_url}/dashboard/"
    assert "Signed in as <strong>demo</strong>" in response.text
    return response


def call_api(session: requests.Session, page: requests.Response) -> requests.Response:
    response = submit(session, page, "call-api-form")
    assert response.status_code == 200, response.text[:2000]
    return response


@pytest.mark.timeout(180)
def test_demo_signs_in_rotates_the_token_and_asks_to_sign_in_again(demo: Demo) -> None:
    session = requests.Session()

    home = session.get(f"{demo.site_url}/", timeout=REQUEST_TIMEOUT)
    assert home.status_code == 200
    dashboard = sign_in(session, demo, home)
    tail = text_of(dashboard, "token-tail")
    assert re.fullmatch(r"…\S{4}", tail), "only the last 4 characters of the token are shown"
    assert text_of(dashboard, "refresh-count") == "0"
    assert session.get(f"{demo.site_url}/", timeout=REQUEST_TIMEOUT).url.endswith("/dashboard/")

    # Not due yet: the API call uses the token from the sign-in as it is.
    if refresh_due_at(dashboard) - time.time() > 2:
        page = call_api(session, dashboard)
        assert userinfo(page)["preferred_username"] == "demo"
        assert text_of(page, "refresh-count") == "0"
        assert text_of(page, "token-tail") == tail

    # Due: the next call refreshes it first, once.
    wait_until_due(dashboard)
    page = call_api(session, dashboard)
    info = userinfo(page)
    assert info["preferred_username"] == "demo"
    assert info["email"] == "demo@example.com"
    assert text_of(page, "refresh-count") == "1"
    assert text_of(page, "token-tail") != tail
    tail = text_of(page, "token-tail")
    page = call_api(session, page)
    assert text_of(page, "refresh-count") == "1"
    assert text_of(page, "token-tail") == tail
    assert userinfo(page)["preferred_username"] == "demo"

    # The user revokes the site's grant at the provider, with the dashboard's button ...
    page = submit(session, page, "revoke-form")
    assert page.url == f"{demo.site_url}/dashboard/"
    revoked = block(page, "revoked")
    assert revoked is not None and "is revoked" in revoked, page.text[:3000]
    assert block(page, "session-error") is None  # the site does not know yet
    assert text_of(page, "token-tail") == tail  # and keeps its copy
    # ... which the provider did: no token of the site left on its own page ...
    tokens = session.get(f"{demo.provider_url}/o/authorized_tokens/", timeout=REQUEST_TIMEOUT)
    assert tokens.status_code == 200
    assert not re.findall(r"/o/authorized_tokens/\d+/delete/", tokens.text), tokens.text[:2000]
    # ... the still unexpired access token is refused at once ...
    page = call_api(session, page)
    api_error = block(page, "api-error")
    assert api_error is not None and "HTTP 401" in api_error
    # ... and once due, the next page load refreshes, is refused, and shows the prompt.
    wait_until_due(page)
    page = session.get(f"{demo.site_url}/dashboard/", timeout=REQUEST_TIMEOUT)
    prompt = block(page, "session-error")
    assert prompt is not None and "Please sign in again" in prompt, page.text[:3000]
    assert "Sign in again with Demo provider" in prompt
    assert 'id="revoke-form"' not in page.text
    page = call_api(session, page)
    reauth = block(page, "reauth")
    assert reauth is not None and "invalid_grant" in reauth, page.text[:3000]
    assert 'id="signin-form"' not in page.text, "one sign-in button: the prompt's"
    history = page.text[page.text.index('id="history"') :]
    assert "failed, sign-in required" in history and "invalid_grant" in history

    # The prompt's button: sign in again (still signed in at the provider, so
    # straight to the consent page), back to the dashboard, prompt gone.
    dashboard = sign_in(session, demo, page, PROMPT_FORM)
    assert block(dashboard, "session-error") is None
    assert text_of(dashboard, "token-tail") != tail
    page = call_api(session, dashboard)
    assert userinfo(page)["preferred_username"] == "demo"
    for secret in demo.stored_tokens():
        assert secret not in page.text

    output = demo.output()
    assert output.count("Refreshed token") == 1, output
    assert re.search(r"Revoked token \d+ of provider demo at the provider\.", output), output
    # Request lines are logged without their query strings (codes, states).
    assert "code=" not in output and "state=" not in output, output
