"""A stand-in for the AI agent's webhook: records each trigger; run as a script, prints a line per trigger."""

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


class AgentReceiver:
    """A local HTTP server standing in for the agent's webhook.

    Every call is kept in `calls` (headers, body, the status answered); the messages it accepted
    (2xx) in `messages`. `status`, `delay` and `script` (a list of (status, headers) answers
    used in turn before `status`) make it fail or hang for tests; `arrived` is set as soon as a
    call's body is read, before any `delay`, and `arrivals` keeps each such body (parsed), so a
    test can act while the caller waits, knowing what it sent. With a
    Standard Webhooks `secret`, a call whose signature does not verify is answered 401 and not accepted.
    """

    def __init__(self, host="127.0.0.1", port=0, status=202, delay=0.0, secret=None, on_message=None, on_reject=None):
        self.status, self.delay, self.on_message, self.on_reject = status, delay, on_message, on_reject
        self.verifier = Webhook(secret) if secret else None
        self.script = []
        self.calls, self.messages, self.headers, self.arrivals = [], [], [], []
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = None

    @property
    def url(self):
        """Where to POST triggers."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/triggers"

    def _answer(self, headers, body):
        """Decide the status and headers for one call, and record it."""
        status, extra, why = self.status, {}, "answered as configured"
        if self.verifier:
            try:
                self.verifier.verify(body, headers)
            except WebhookVerificationError as exc:
                status, why = 401, f"signature did not verify ({exc})"
        if status != 401:
            with self._lock:
                if self.script:
                    status, extra = self.script.pop(0)
        message = json.loads(body)
        with self._lock:
            self.calls.append({"headers": headers, "body": body, "status": status})
            if 200 <= status < 300:
                self.messages.append(message)
                self.headers.append(headers)
        if 200 <= status < 300 and self.on_message:
            self.on_message(message)
        elif not 200 <= status < 300 and self.on_reject:
            self.on_reject(status, headers.get("webhook-id") or headers.get("Webhook-Id"), why)
        return status, extra

    def _handler_class(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    arrival = json.loads(body)
                except ValueError:
                    # A stand-in still answers like a real service: bad input is a 400, not a dropped connection.
                    if receiver.on_reject:
                        receiver.on_reject(400, self.headers.get("webhook-id"), "the body is not JSON")
                    self._reply(400, {})
                    return
                with receiver._lock:
                    receiver.arrivals.append(arrival)
                receiver.arrived.set()
                if receiver.delay:
                    time.sleep(receiver.delay)
                self._reply(*receiver._answer(dict(self.headers), body))

            def _reply(self, status, headers):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass  # the printed triggers are the useful output

        return Handler

    def triggered(self):
        """Every (deployment, reasons) pair received so far, in arrival order."""
        with self._lock:
            return [(t["deployment"], t["reasons"]) for m in self.messages for t in m["triggers"]]

    def start(self):
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


def print_message(message, verbose=False):
    """Print one line per trigger of a message, and with `verbose` the whole message as JSON."""
    for trigger in message["triggers"]:
        reasons = ", ".join(f"{r['rule']} {r['value']} (> {r['threshold']})" for r in trigger["reasons"])
        escalation = " [escalation]" if trigger.get("escalation") else ""
        print(
            f"TRIGGER {message['namespace']}/{trigger['deployment']} from {message['source']}{escalation}: {reasons}",
            flush=True,
        )
    if verbose:
        print(json.dumps(message, indent=2), flush=True)


def print_rejection(status, webhook_id, why):
    """Print one line for a call the receiver did not accept."""
    print(f"REJECTED {status} {webhook_id or '(no webhook-id)'}: {why}", flush=True)


def main(argv=None):
    """Run the receiver until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--status", type=int, default=202, help="HTTP status to answer with")
    parser.add_argument("--verbose", action="store_true", help="print each message as JSON too")
    args = parser.parse_args(argv)
    # With the services' signing secret, calls whose signature does not verify are refused (401).
    secret = os.environ.get("AGENT_WEBHOOK_SECRET") or None
    receiver = AgentReceiver(
        host=args.host,
        port=args.port,
        status=args.status,
        secret=secret,
        on_message=lambda message: print_message(message, args.verbose),
        on_reject=print_rejection,
    )
    print(f"agent receiver listening on {receiver.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
