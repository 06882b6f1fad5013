"""A counting TCP proxy for Redis: how many commands and round trips a client's requests cost.

Commands are counted by parsing the RESP the client sends, so a Lua script's EVALSHA counts once
(INFO commandstats on the server would also count every call the script makes).

A round trip is one "send, then wait for the reply" of the client. The proxy cannot see the client
read, and a pipelined batch reaches it in several TCP segments, so counting segments (or even
command boundaries) would over-count whenever Redis answers the first part of a batch before the
rest arrives. Instead the proxy holds Redis's replies back until the client has been quiet for
`quiet_seconds`: a client that pipelines sends its whole batch before it reads anything, so every
segment of one batch arrives while no reply has been forwarded yet. Data from the client after a
reply was forwarded therefore starts a new round trip, exactly. The hold adds `quiet_seconds` of
latency per round trip, which is why the benchmark times requests against Redis directly and sends
only a few sequential requests through this proxy.
"""

import contextlib
import socket
import threading
import time


class CommandParser:
    """Counts complete RESP commands in a byte stream that arrives in arbitrary pieces."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data):
        """Add bytes from the client; return how many commands they completed."""
        self.buffer += data
        count, position = 0, 0
        while (end := self._command_end(position)) is not None:
            count, position = count + 1, end
        del self.buffer[:position]
        return count

    def _command_end(self, position):
        """Where the command starting at `position` ends, or None while it is incomplete."""
        buffer = self.buffer
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        if buffer[position : position + 1] != b"*":
            return line_end + 2  # an inline command: one line
        items = int(buffer[position + 1 : line_end])
        position = line_end + 2
        for _ in range(items):
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            # "$<length>\r\n<bytes>\r\n"
            position = line_end + 2 + int(buffer[position + 1 : line_end]) + 2
            if position > len(buffer):
                return None
        return position


class _Link:
    """One client connection and its own connection to Redis."""

    def __init__(self, client, server):
        self.client, self.server = client, server
        self.parser = CommandParser()
        # True once a reply went to the client: its next bytes start a new round trip.
        self.replied = True
        self.client_busy = False
        self.last_client_data = 0.0


class CountingProxy:
    """Forwards loopback connections to Redis and counts the commands and round trips it sees."""

    def __init__(self, redis_port, quiet_seconds=0.01):
        self.redis_port = redis_port
        self.quiet_seconds = quiet_seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands = 0
        self.round_trips = 0
        self._lock = threading.Lock()
        self._links = []
        self._stopped = False

    @property
    def url(self):
        """A REDIS_URL that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        """Accept connections in a background thread; return self."""
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def counts(self):
        """(commands, round trips) seen so far, over every connection."""
        with self._lock:
            return self.commands, self.round_trips

    def stop(self):
        """Close the listener and every connection."""
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        for link in self._links:
            for sock in (link.client, link.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self):
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._client_to_redis, args=(link,), daemon=True).start()
            threading.Thread(target=self._redis_to_client, args=(link,), daemon=True).start()

    def _client_to_redis(self, link):
        with contextlib.suppress(OSError):
            while data := link.client.recv(1 << 20):
                with self._lock:
                    link.client_busy = True
                    if link.replied:
                        self.round_trips += 1
                        link.replied = False
                commands = link.parser.feed(data)
                link.server.sendall(data)
                with self._lock:
                    self.commands += commands
                    link.client_busy = False
                    link.last_client_data = time.monotonic()
        self._close(link)

    def _redis_to_client(self, link):
        with contextlib.suppress(OSError):
            while data := link.server.recv(1 << 20):
                self._wait_for_quiet_client(link)
                with self._lock:
                    # Marked before sending: the client may answer before sendall returns here.
                    link.replied = True
                link.client.sendall(data)
        self._close(link)

    def _wait_for_quiet_client(self, link):
        """Hold replies while the client is still sending (see the module docstring)."""
        while True:
            with self._lock:
                wait = 0.001 if link.client_busy else link.last_client_data + self.quiet_seconds - time.monotonic()
            if wait <= 0:
                return
            time.sleep(wait)

    @staticmethod
    def _close(link):
        for sock in (link.client, link.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
