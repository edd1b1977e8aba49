#!/usr/bin/env python
"""Django's command-line utility for the demo site (example_project.settings).

``make demo`` starts the site and its provider together; this is for anything
else, such as ``python manage.py shell`` or ``python manage.py createsuperuser``.
The demo provider has its own settings:
``DJANGO_SETTINGS_MODULE=example_project.demo_provider.settings python -m django ...``.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
