"""Start the demo: ``make demo`` (or ``.venv/bin/python example_project/run_demo.py``).

Two Django development servers, on 127.0.0.1, both threaded:

* the demo provider (django-oauth-toolkit, OpenID Connect) on port 8001;
* the demo site (django-allauth + django_token_rotation) on port 8000.

Each migrates its SQLite database and creates its demo data on start (both are
idempotent), so a fresh checkout and a restart work the same. Ctrl-C stops both.

Options (or environment variables): ``--site-port`` (``DEMO_SITE_PORT``),
``--provider-port`` (``DEMO_PROVIDER_PORT``), ``--data-dir`` (``DEMO_DATA_DIR``,
default: this directory), ``--access-token-seconds`` (``DEMO_ACCESS_TOKEN_SECONDS``,
default 30).

``DEMO_OIDC_SERVER_URL``, ``DEMO_OIDC_CLIENT_ID`` and ``DEMO_OIDC_SECRET`` point
the site at a real OpenID Connect provider instead (see ``demo_config.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LEEWAY = 10  # TOKEN_ROTATION_LEEWAY of the demo site
REQUIRED = {
    "django": "Django",
    "allauth": "django-allauth",
    "oauth2_provider": "django-oauth-toolkit",
    "requests": "requests",
    "django_token_rotation": "django-token-rotation (this project)",
}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the django-token-rotation demo: a site and its OpenID Connect provider."
    )
    parser.add_argument("--site-port", type=int, default=_env_int("DEMO_SITE_PORT", 8000))
    parser.add_argument("--provider-port", type=int, default=_env_int("DEMO_PROVIDER_PORT", 8001))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEMO_DATA_DIR") or Path(__file__).resolve().parent),
        help="where the SQLite databases and the provider's signing key are kept",
    )
    parser.add_argument(
        "--access-token-seconds",
        type=int,
        default=_env_int("DEMO_ACCESS_TOKEN_SECONDS", 30),
        help="lifetime of the provider's access tokens (default 30)",
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.access_token_seconds <= LEEWAY:
        parser.error(
            f"--access-token-seconds must be more than {LEEWAY}: the site refreshes a token"
            f" {LEEWAY} s before it expires (TOKEN_ROTATION_LEEWAY in example_project/settings.py)"
        )
    return args


def _missing_packages() -> list[str]:
    return [name for module, name in REQUIRED.items() if importlib.util.find_spec(module) is None]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _pump(stream: IO[str], label: str) -> None:
    """Copy a server's output to ours, each line prefixed with the server's name."""
    for line in stream:
        sys.stdout.write(f"{label} | {line}")
        sys.stdout.flush()


def _listening(port: int) -> bool:
    """Whether a server accepts connections on ``port`` (its requests queue until it serves)."""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = _missing_packages()
    if missing:
        print(
            f"Missing: {', '.join(missing)}. Run `make demo` from {REPO_ROOT}, which installs"
            " them into .venv, or `pip install -e '.[demo]'`.",
            file=sys.stderr,
        )
        return 2
    for name, port in (("site", args.site_port), ("provider", args.provider_port)):
        if _port_in_use(port):
            print(
                f"Port {port} on {HOST} (the {name}) is in use. Stop whatever uses it, or pick"
                f" another with --{name}-port (or DEMO_{name.upper()}_PORT).",
                file=sys.stderr,
            )
            return 2
    external = os.environ.get("DEMO_OIDC_SERVER_URL", "").strip()
    if external and not (
        os.environ.get("DEMO_OIDC_CLIENT_ID", "").strip()
        and os.environ.get("DEMO_OIDC_SECRET", "").strip()
    ):
        print(
            "DEMO_OIDC_SERVER_URL is set: DEMO_OIDC_CLIENT_ID and DEMO_OIDC_SECRET are needed too.",
            file=sys.stderr,
        )
        return 2
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # each server sets its own
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_RUNSERVER_HIDE_WARNING": "true",
            "DEMO_SITE_PORT": str(args.site_port),
            "DEMO_PROVIDER_PORT": str(args.provider_port),
            "DEMO_DATA_DIR": str(data_dir),
            "DEMO_ACCESS_TOKEN_SECONDS": str(args.access_token_seconds),
        }
    )
    site_url = f"http://{HOST}:{args.site_port}"
    provider_url = f"http://{HOST}:{args.provider_port}"

    # Ctrl-C reaches the servers too (same process group); SIGTERM and SIGHUP
    # reach only us: all three end up in the same clean shutdown.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)

    started = time.monotonic()
    print(f"Starting the demo provider and the demo site (data in {data_dir}) ...", flush=True)
    processes: dict[str, subprocess.Popen[str]] = {}
    pumps: list[threading.Thread] = []
    try:
        for label in ("provider", "site"):
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "example_project.serve",
                    label,
                    "--parent-pid",
                    str(os.getpid()),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
            processes[label] = process
            assert process.stdout is not None
            pump = threading.Thread(target=_pump, args=(process.stdout, f"{label:<8}"), daemon=True)
            pump.start()
            pumps.append(pump)

        ports = {"provider": args.provider_port, "site": args.site_port}
        deadline = time.monotonic() + args.startup_timeout
        waiting = dict(ports)
        while waiting:
            for label, port in list(waiting.items()):
                if processes[label].poll() is not None:
                    print(f"The {label} stopped while starting; see its output above.", flush=True)
                    return 1
                if _listening(port):
                    del waiting[label]
            if waiting and time.monotonic() > deadline:
                print(
                    f"Gave up after {args.startup_timeout:.0f} s: {', '.join(waiting)}"
                    " did not answer.",
                    flush=True,
                )
                return 1
            if waiting:
                time.sleep(0.2)

        rule = "=" * 72
        if external:
            signin = (
                f"            and sign in with {external}\n"
                f"            (redirect URI: {site_url}/accounts/oidc/external/login/callback/)\n"
            )
            lifetime = "Access tokens live as long as that provider says"
        else:
            signin = "            and sign in with the Demo provider as  demo / demo-password\n"
            lifetime = f"Access tokens live {args.access_token_seconds} s"
        print(
            f"\n{rule}\n"
            f"  The demo is running (ready in {time.monotonic() - started:.1f} s).\n\n"
            f"  Open      {site_url}/\n"
            f"{signin}"
            f"  Admin     {site_url}/admin/   as  admin / admin-password\n"
            f"            (signing in there replaces the demo user's session)\n"
            f"  Provider  {provider_url}/\n\n"
            f"  {lifetime}; the site refreshes one {LEEWAY} s before it expires.\n"
            f"  Then: wait for the countdown, reload, watch the token rotate;\n"
            f'  press "Revoke my grant at the provider" and see the sign-in prompt.\n'
            f"  Press Ctrl-C to stop both servers.\n"
            f"{rule}\n",
            flush=True,
        )
        while True:
            for label, process in processes.items():
                if process.poll() is not None:
                    print(f"The {label} stopped (exit status {process.returncode}).", flush=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping the demo ...", flush=True)
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            for process in processes.values():
                _stop(process)
            for pump in pumps:  # the servers' last words
                pump.join(timeout=2)


if __name__ == "__main__":
    # Run as a script (python example_project/run_demo.py): make the repository
    # root importable instead of this directory, for this process and the servers.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(here)]
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
