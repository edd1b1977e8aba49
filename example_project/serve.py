"""Run one half of the demo: ``python -m example_project.serve site|provider``.

Migrates that half's SQLite database, creates its demo data when missing, then
runs Django's development server (threaded, no autoreloader) on 127.0.0.1.
``run_demo.py`` starts both halves; ports and paths come from the ``DEMO_*``
environment variables read by :mod:`example_project.demo_config`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence

from example_project import demo_config as demo

SETTINGS = {
    "site": "example_project.settings",
    "provider": "example_project.demo_provider.settings",
}


def seed_site() -> None:
    """The site's superuser, for the admin."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if not user_model.objects.filter(username=demo.ADMIN_USERNAME).exists():
        user_model.objects.create_superuser(
            demo.ADMIN_USERNAME, "admin@example.com", demo.ADMIN_PASSWORD
        )


def seed_provider() -> None:
    """The provider's demo user, and the site's OAuth2 client (updated on every start)."""
    from django.contrib.auth import get_user_model
    from oauth2_provider.models import get_application_model

    user_model = get_user_model()
    if not user_model.objects.filter(username=demo.DEMO_USERNAME).exists():
        user_model.objects.create_user(
            demo.DEMO_USERNAME,
            "demo@example.com",
            demo.DEMO_PASSWORD,
            first_name="Demo",
            last_name="User",
        )

    application = get_application_model()
    application.objects.update_or_create(
        client_id=demo.CLIENT_ID,
        defaults={
            "name": "Token rotation demo site",
            "client_type": application.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": application.GRANT_AUTHORIZATION_CODE,
            # Stored hashed, like any client secret.
            "client_secret": demo.CLIENT_SECRET,
            "hash_client_secret": True,
            "redirect_uris": " ".join(demo.REDIRECT_URIS),
            "algorithm": application.RS256_ALGORITHM,
            "skip_authorization": False,
        },
    )


def _exit_with_parent(parent_pid: int) -> None:
    """End this process once its parent (run_demo.py) is gone, however it ended."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("half", choices=sorted(SETTINGS))
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)

    # Overrides an inherited value (a test runner's, say): each half has its own.
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS[args.half]
    if args.parent_pid:
        threading.Thread(
            target=_exit_with_parent, args=(args.parent_pid,), name="parent-watch", daemon=True
        ).start()

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    if args.half == "site":
        seed_site()
        port = demo.SITE_PORT
    else:
        seed_provider()
        port = demo.PROVIDER_PORT
    with contextlib.suppress(KeyboardInterrupt):
        call_command("runserver", f"{demo.HOST}:{port}", use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
