"""The async twins of the public API, and where their blocking work runs.

Two kinds of work, two threads:

* the **fast path** (read the stored token, see that it is fresh) is one query.
  It runs as Django's own async ORM methods do (``sync_to_async`` with
  ``thread_sensitive=True``): inside a request, on that request's sync thread
  and database connection, which Django closes when the request finishes.
* a **refresh** (the lease, the HTTP call to the token endpoint, the wait for
  another worker's refresh: up to ``TOKEN_ROTATION_WAIT`` seconds) runs on
  this module's own pool of :data:`MAX_THREADS` threads, so that it never holds
  the event loop, a request's thread, or another caller's refresh. It runs
  the very same sync engine as :func:`~django_token_rotation.get_access_token`,
  so async and sync callers share one single-flight. The database connections
  such a call opens are closed before its thread is handed back: a pool thread
  keeps none between calls (and so none can leak or go stale there).

Nothing here imports the request layer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections
from django.views.decorators.debug import sensitive_variables

from . import rotation
from .exceptions import TokenRefreshUnavailable, TokenRotationError
from .expiry import needs_refresh
from .store import state_of

if TYPE_CHECKING:
    from allauth.socialaccount.models import SocialToken

#: Threads that run the refreshes of async callers, per process. It bounds the
#: extra database connections a burst of refreshes takes (one per thread, each
#: closed when its call ends); callers beyond it queue for a thread.
MAX_THREADS = 8


def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="token-rotation")


_pool = _new_pool()


def _after_fork() -> None:
    # A forked worker (gunicorn --preload, multiprocessing) has none of the parent's
    # threads: a pool that believes it has some would never run a call.
    global _pool
    _pool = _new_pool()


os.register_at_fork(after_in_child=_after_fork)

P = ParamSpec("P")
R = TypeVar("R")


def _closing_connections(func: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            # This thread is ours alone: nothing else uses its connections.
            connections.close_all()

    return call


async def run_blocking(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` (ORM and HTTP) on the refresh pool; its connections are closed after."""
    call = sync_to_async(_closing_connections(func), thread_sensitive=False, executor=_pool)
    return await call(*args, **kwargs)


def acontained(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The async :func:`~django_token_rotation.exceptions.contained`: our errors
    leave with a traceback that starts here (no frame of the thread that held a
    token), anything unexpected as ``internal_error``."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except TokenRotationError as exc:
            raise exc.with_traceback(None) from None
        except Exception as exc:
            rotation.logger.error(
                "Unexpected %s in %s; reported as internal_error.",
                type(exc).__name__,
                func.__qualname__,
            )
            raise TokenRefreshUnavailable(
                "An unexpected error occurred while handling a token.", code="internal_error"
            ) from None

    return wrapper


@acontained
@sensitive_variables()
async def aget_access_token(user: Any, provider: str) -> str:
    """The async twin of :func:`django_token_rotation.get_access_token`."""
    token = await sync_to_async(rotation.find_token, thread_sensitive=True)(user, provider)
    if token is not None and not needs_refresh(token, state_of(token)):
        return str(token.token)
    # Due, expired or missing: the sync entry point, from the top, on the pool.
    return await run_blocking(rotation.get_access_token, user, provider)


@acontained
@sensitive_variables()
async def arefresh(token: SocialToken, force: bool = False) -> SocialToken:
    """The async twin of :func:`django_token_rotation.refresh`."""
    return await run_blocking(rotation.refresh, token, force)
