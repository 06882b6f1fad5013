"""Run the aggregator locally on defaults: Redis, the agent receiver and both services, until Ctrl-C.

`make run` calls this. Whatever it started is stopped again on Ctrl-C or SIGTERM, and when any
one process dies the others are stopped too, so nothing is left listening.
"""

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from devtools.redis_command import redis_server_argv
from shared.runtime import gunicorn_settings
from shared.web.services import SERVICES

ROOT = Path(__file__).resolve().parent.parent
RECEIVER_PORT = 9000
STARTUP_TIMEOUT = 30.0
# Above gunicorn's default graceful_timeout (20 s), so requests in flight can finish.
STOP_TIMEOUT = 25.0
POLL_SECONDS = 0.1


class Stop(Exception):
    """Ctrl-C or SIGTERM asked us to stop."""


class LaunchError(Exception):
    """Something could not start; the message says what to do."""


class Children:
    """The processes started so far; stopping them goes in reverse order of starting."""

    def __init__(self):
        self.running = []
        self.stop_requested = False

    def request_stop(self, signum, frame):
        """Signal handler: only note the request, so no start or stop is cut in half."""
        self.stop_requested = True

    def start(self, name, argv, env):
        """Start one child in the repo root; its output goes straight to our terminal."""
        print(f"run_local: starting {name}: {shlex.join(argv)}", flush=True)
        # A session of its own keeps Ctrl-C away from the child: we stop the children in order.
        process = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        self.running.append((name, process))
        return process

    def check(self):
        """Raise Stop when a stop was requested and LaunchError when a child has exited."""
        if self.stop_requested:
            raise Stop
        for name, process in self.running:
            code = process.poll()
            if code is not None:
                raise LaunchError(f"{name} exited with code {code}; stopping everything")

    def wait_for(self, what, ready, timeout=STARTUP_TIMEOUT):
        """Poll ready() until it is true, watching the children meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            if ready():
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"{what} was not ready after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def watch(self):
        """Block until a stop is requested or a child exits."""
        while True:
            self.check()
            time.sleep(POLL_SECONDS)

    def stop_all(self):
        """Stop every child, newest first: the services go before the Redis they write to."""
        for name, process in reversed(self.running):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"run_local: {name} ignored SIGTERM; killing it", flush=True)
                    process.kill()
                    process.wait()
            # Leftovers in its group go too: gunicorn workers outlive a master that was killed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.running.clear()


def free_port():
    """A loopback TCP port nobody listens on right now (never Redis's 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 6379:
            return port


def ensure_port_free(port, host, owner):
    """Raise LaunchError when something already listens on the port we need."""
    with socket.socket() as sock:
        # Like gunicorn, ignore sockets of a previous run still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise LaunchError(f"port {port} ({owner}) is already in use; stop whatever holds it") from None


def redis_answers(url):
    """True when Redis at url answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


def port_accepts(port):
    """True when something accepts connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def healthy(url):
    """True when url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_redis(children, workdir):
    """Start a redis-server (the bundled valkey-server without one) that keeps nothing on disk; return its URL."""
    port = free_port()
    try:
        argv = redis_server_argv(port, workdir)
    except RuntimeError as exc:
        raise LaunchError(f"{exc}, or set REDIS_URL") from None
    name = Path(argv[0]).name
    children.start(name, argv, os.environ.copy())
    url = f"redis://127.0.0.1:{port}/0"
    children.wait_for(name, lambda: redis_answers(url))
    return url


def start_receiver(children, env, port):
    """Start the stand-in agent that prints each trigger; return its webhook URL."""
    children.start("agent receiver", [sys.executable, "-m", "devtools.agent_receiver", "--port", str(port)], env)
    children.wait_for("agent receiver", lambda: port_accepts(port))
    return f"http://127.0.0.1:{port}/triggers"


def development_tokens(env):
    """Generate a token for each service that has none configured; return the generated ones."""
    generated = {}
    for spec in SERVICES:
        name = spec.token_setting
        if not env.get(name) and not env.get(f"{name}_FILE"):
            generated[name] = env[name] = secrets.token_urlsafe(24)
    return generated


def curl_token(name, env):
    """A token for the curl examples, as the shell should see it."""
    if env.get(name):
        # Several comma-separated tokens are accepted during a rotation; any one will do.
        return env[name].split(",")[0].strip()
    return f"$(cut -d, -f1 {shlex.quote(env[f'{name}_FILE'])})"


def print_ready(env, generated):
    """Print the tokens and the curl commands that send the seed payloads."""
    print("\nrun_local: everything is up. In another terminal, from the repo root:\n", flush=True)
    for name, token in generated.items():
        print(f"{name}={token}")
    print()
    for spec in SERVICES:
        print(
            f'curl -H "Authorization: Bearer {curl_token(spec.token_setting, env)}" '
            f"-H 'Content-Type: application/json' --data @tests/fixtures/{spec.seed} localhost:{spec.port}{spec.path}"
        )
    print("\nTriggers the agent receives are printed below. Ctrl-C stops everything.\n", flush=True)


def run(children, workdir):
    """Start everything, then wait until told to stop or a child dies."""
    env = os.environ.copy()
    env.setdefault("WEB_CONCURRENCY", "2")
    # A development launcher has no business listening on every interface with its throwaway tokens.
    env.setdefault("HOST", "127.0.0.1")
    env["PYTHONUNBUFFERED"] = "1"
    # gunicorn would stop on a bad WEB_CONCURRENCY with a traceback, before gunicorn.conf.py speaks.
    gunicorn_settings.check({**env, "PORT": str(SERVICES[0].port)})
    # Checked before anything starts, so a busy port costs no start-up and teardown.
    for spec in SERVICES:
        ensure_port_free(spec.port, env["HOST"], f"{spec.name} service")
    # With a webhook URL of your own there is no receiver, and nothing to take port 9000 from your agent.
    receiver_port = None
    if not env.get("AGENT_WEBHOOK_URL"):
        receiver_port = int(env.get("RECEIVER_PORT", RECEIVER_PORT))
        ensure_port_free(receiver_port, "127.0.0.1", "agent receiver; set RECEIVER_PORT to move it")
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_redis(children, workdir)
    if receiver_port is not None:
        env["AGENT_WEBHOOK_URL"] = start_receiver(children, env, receiver_port)
    generated = development_tokens(env)
    for spec in SERVICES:
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", spec.app]
        children.start(f"{spec.name} service", argv, {**env, "PORT": str(spec.port)})
    for spec in SERVICES:
        url = f"http://127.0.0.1:{spec.port}/healthz"
        children.wait_for(f"{spec.name} service", lambda url=url: healthy(url))
    print_ready(env, generated)
    children.watch()


def main():
    """Run until Ctrl-C or SIGTERM; exit non-zero when something failed."""
    children = Children()
    # Installed explicitly: a launcher started in the background may have inherited SIGINT ignored.
    signal.signal(signal.SIGINT, children.request_stop)
    signal.signal(signal.SIGTERM, children.request_stop)
    code = 0
    with tempfile.TemporaryDirectory(prefix="aggregator-redis-") as workdir:
        try:
            run(children, workdir)
        except Stop:
            print("\nrun_local: stopping", flush=True)
        except LaunchError as exc:
            print(f"run_local: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            children.stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
