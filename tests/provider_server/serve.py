"""Run the provider: ``python -m tests.provider_server.serve [--port N] [--exit-on-stdin-eof]``.

Run it from the repository root (so ``tests`` is importable) with
``DJANGO_SETTINGS_MODULE=tests.provider_server.settings`` and ``PROVIDER_DB_PATH``
set. It migrates its database, creates user ``alice`` and two clients if they are
missing, binds 127.0.0.1, prints one JSON line to stdout::

    {"port": ..., "client_id": ..., "client_secret": ..., "public_client_id": ...}

and serves until killed, one thread per connection.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

USERNAME = "alice"
PASSWORD = "alice-password"
EMAIL = "alice@example.com"
CONFIDENTIAL_CLIENT_ID = "token-rotation-confidential"
PUBLIC_CLIENT_ID = "token-rotation-public"


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """The stdlib WSGI server, one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        """Bind like ``HTTPServer`` does, minus its reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class QuietRequestHandler(WSGIRequestHandler):
    """No per-request log lines."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _ensure_fixtures() -> dict[str, str]:
    """Create the user and both applications unless present; return the client ids."""
    from django.contrib.auth import get_user_model
    from oauth2_provider.generators import generate_client_secret
    from oauth2_provider.models import get_application_model

    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=USERNAME, defaults={"email": EMAIL})
    if user.email != EMAIL or not user.check_password(PASSWORD):
        user.email = EMAIL
        user.set_password(PASSWORD)
        user.save()

    application_model = get_application_model()
    confidential = application_model.objects.filter(client_id=CONFIDENTIAL_CLIENT_ID).first()
    if confidential is None:
        confidential = application_model.objects.create(
            name="token-rotation confidential client",
            client_id=CONFIDENTIAL_CLIENT_ID,
            # Kept in plaintext so that it can be handed to the tests.
            client_secret=generate_client_secret(),
            hash_client_secret=False,
            client_type=application_model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=application_model.GRANT_PASSWORD,
            algorithm=application_model.RS256_ALGORITHM,
            skip_authorization=True,
        )
    if not application_model.objects.filter(client_id=PUBLIC_CLIENT_ID).exists():
        application_model.objects.create(
            name="token-rotation public client",
            client_id=PUBLIC_CLIENT_ID,
            client_secret="",
            hash_client_secret=False,
            client_type=application_model.CLIENT_PUBLIC,
            authorization_grant_type=application_model.GRANT_PASSWORD,
            algorithm=application_model.RS256_ALGORITHM,
            skip_authorization=True,
        )
    return {
        "client_id": confidential.client_id,
        "client_secret": confidential.client_secret,
        "public_client_id": PUBLIC_CLIENT_ID,
    }


def _exit_on_stdin_eof() -> None:
    """End the process once stdin closes, i.e. once the parent is gone."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Set up, announce the port and credentials on stdout, serve forever."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin is closed (the test fixture uses this)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.provider_server.settings")
    # DOT warns (DeprecationWarning) on every password grant; nobody reads them here.
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    # Bind first: the issuer, which the settings read, needs the port.
    server = ThreadingWSGIServer(("127.0.0.1", args.port), QuietRequestHandler)
    port = server.server_address[1]
    os.environ["PROVIDER_ISSUER"] = f"http://127.0.0.1:{port}/o"

    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    credentials = _ensure_fixtures()
    server.set_app(get_wsgi_application())

    sys.stdout.write(json.dumps({"port": port, **credentials}) + "\n")
    sys.stdout.flush()

    if args.exit_on_stdin_eof:
        threading.Thread(target=_exit_on_stdin_eof, name="stdin-watch", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
