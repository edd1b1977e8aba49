"""The Celery app of the task tests' real worker (``celery -A tests.celery_app worker``).

The broker, result backend and queue come from the environment, so that every
test run uses its own Redis database and queue; the database from
``TOKEN_ROTATION_TEST_WORKER_DB`` (see ``tests/settings.py``), shared with the test.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("token_rotation_tests")
app.conf.update(
    broker_url=os.environ.get("TOKEN_ROTATION_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/15"),
    result_backend=os.environ.get("TOKEN_ROTATION_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/15"),
    task_default_queue=os.environ.get("TOKEN_ROTATION_TEST_CELERY_QUEUE", "token-rotation-tests"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    include=["django_token_rotation.tasks"],
)
