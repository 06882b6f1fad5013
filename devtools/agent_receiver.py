"""A stand-in for the AI agent's webhook: records each trigger and, run as a script, prints it."""

import argparse
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class AgentReceiver:
    """A local HTTP server that stores every JSON body POSTed to it.

    `status` and `delay` set how it answers, so tests can make the agent fail or hang.
    """

    def __init__(self, host="127.0.0.1", port=0, status=202, delay=0.0, on_message=None):
        self.status, self.delay, self.on_message = status, delay, on_message
        self.messages, self.headers = [], []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = None

    @property
    def url(self):
        """Where to POST triggers."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/triggers"

    def _handler_class(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    message = json.loads(body)
                except ValueError:
                    # A stand-in still answers like a real service: bad input is a 400, not a dropped connection.
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.messages.append(message)
                    receiver.headers.append(dict(self.headers))
                if receiver.on_message:
                    receiver.on_message(message)
                self.send_response(receiver.status)
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


def print_message(message):
    """Print one trigger message the way a person wants to read it."""
    for trigger in message["triggers"]:
        reasons = ", ".join(f"{r['rule']} {r['value']} (> {r['threshold']})" for r in trigger["reasons"])
        print(f"TRIGGER {message['namespace']}/{trigger['deployment']} from {message['source']}: {reasons}", flush=True)
    print(json.dumps(message, indent=2), flush=True)


def main(argv=None):
    """Run the receiver until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--status", type=int, default=202, help="HTTP status to answer with")
    args = parser.parse_args(argv)
    receiver = AgentReceiver(host=args.host, port=args.port, status=args.status, on_message=print_message)
    print(f"agent receiver listening on {receiver.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
