"""The deadline: a Watchdog cuts the calls made inside it, whatever the peer does, and only those."""

import threading

import pytest
import requests

from devtools.agent_receiver import AgentReceiver
from devtools.harness import wait_until
from shared.delivery.deadline import Watchdog, deadline_session

LONG = 60  # seconds: a timeout or deadline that a passing test never reaches


class WatchedCall:
    """A POST made in a thread of its own inside a Watchdog, so that the test can cut it when it chooses."""

    def __init__(self, url, deadline=LONG):
        self.watchdog = Watchdog(deadline)
        self.error = None  # what the call raised
        self.status = None  # the status it got, when it got an answer
        self._thread = threading.Thread(target=self._post, args=(url,), daemon=True)
        self._thread.start()

    def _post(self, url):
        try:
            with self.watchdog, deadline_session().post(url, data=b"{}", timeout=(LONG, LONG), stream=True) as answer:
                self.status = answer.status_code
        except requests.RequestException as exc:
            self.error = exc

    @property
    def running(self):
        """True while the call has not ended."""
        return self._thread.is_alive()

    def join(self):
        """Wait for the call to end; what it raised (None when it ended with an answer)."""
        self._thread.join(timeout=LONG)
        assert not self.running, "the call was not cut"
        return self.error


@pytest.fixture
def watched():
    """watched(url, deadline): a WatchedCall, cut after the test whatever happened."""
    calls = []

    def start(url, deadline=LONG):
        calls.append(WatchedCall(url, deadline))
        return calls[-1]

    yield start
    for call in calls:
        call.watchdog.cut()
        call.join()


def test_a_cut_ends_a_call_the_agent_never_answers(agent, watched):
    hanging = agent("hang")
    call = watched(hanging.url)
    wait_until(lambda: hanging.requests)
    call.watchdog.cut()
    # A read timeout would name itself; the call ended because its socket was shut.
    assert isinstance(call.join(), requests.ConnectionError)
    assert call.watchdog.fired.is_set() and call.watchdog.statuses == []


def test_the_deadline_cuts_by_itself(agent, watched):
    hanging = agent("hang")
    call = watched(hanging.url, deadline=0.2)
    assert isinstance(call.join(), requests.ConnectionError)
    assert call.watchdog.fired.is_set() and len(hanging.requests) == 1


def test_a_status_line_is_noted_before_the_headers_that_drip_after_it(agent, watched):
    dripping = agent("drip_headers", interval=0.05, drip_bytes=10_000)
    call = watched(dripping.url)
    wait_until(lambda: call.watchdog.statuses)
    # Noted while the headers still drip: the caller can tell "answered 200, then dripped" from
    # "never answered" when the deadline cuts the headers short.
    assert call.watchdog.statuses == [200] and call.running
    call.watchdog.cut()
    call.join()
    assert call.watchdog.fired.is_set()


def test_a_call_answered_in_time_is_not_cut_and_nothing_stays_watched():
    receiver = AgentReceiver().start()
    try:
        session = deadline_session()
        with (
            Watchdog(LONG) as watchdog,
            session.post(receiver.url, json={}, timeout=(LONG, LONG), stream=True) as response,
        ):
            assert response.status_code == 202
        assert not watchdog.fired.is_set() and watchdog.statuses == [202] and len(watchdog.connections) == 1
        # Outside the watchdog, calls are not registered with it: the thread's record of them is gone.
        with session.post(receiver.url, json={}, timeout=(LONG, LONG), stream=True) as response:
            assert response.status_code == 202
        assert watchdog.statuses == [202] and len(watchdog.connections) == 1
    finally:
        receiver.stop()


def test_a_watchdog_watches_only_the_thread_that_entered_it(agent):
    hanging = agent("hang")
    errors = []

    def post():
        try:
            deadline_session().post(hanging.url, data=b"{}", timeout=(LONG, 0.5))
        except requests.RequestException as exc:
            errors.append(exc)

    with Watchdog(LONG) as watchdog:
        other = threading.Thread(target=post, daemon=True)
        other.start()
        wait_until(lambda: hanging.requests)
        watchdog.cut()
        other.join(timeout=LONG)
    # The other thread's call was not cut: it ran into its own read timeout.
    assert watchdog.connections == [] and isinstance(errors[0], requests.ReadTimeout)
