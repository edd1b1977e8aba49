#!/usr/bin/env bash
# Redis on 127.0.0.1:6379: the Celery tasks run on a real worker in
# tests/test_tasks.py, and the cache-sessions shape keeps its sessions there.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping; }
if ! redis_up >/dev/null 2>&1; then
    apt_install redis-server redis-tools
    echo "Redis is down; starting it"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
    wait_for 30 redis_up || true
fi
redis_up
