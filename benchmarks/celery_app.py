"""The Celery app of the benchmark's workers: broker and queue from the environment
(``benchmarks.run`` picks its own Redis database and queue)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

BROKER = os.environ.get("TOKEN_ROTATION_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/14")

app = Celery("token_rotation_benchmarks")
app.conf.update(
    broker_url=BROKER,
    result_backend=BROKER,
    result_expires=600,
    task_default_queue=os.environ.get("TOKEN_ROTATION_BENCH_CELERY_QUEUE", "token-rotation-bench"),
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    include=["django_token_rotation.tasks"],
)
