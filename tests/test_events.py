"""The one list of events: every download state announces a defined event, and typos are refused."""
import pytest

from daemon import events
from daemon.states import Status


def test_every_state_has_its_event_and_every_event_a_doc():
    assert set(events.FOR_STATE) == set(Status)
    assert all(name in events.CATALOGUE for name in events.FOR_STATE.values())
    assert all(spec.doc and spec.name == name for name, spec in events.CATALOGUE.items())


def test_live_only_events_never_reach_the_sinks():
    for name in (events.DOWNLOAD_PROGRESS, events.LIBRARY_SCAN_PROGRESS, events.SNAPSHOT):
        assert name not in events.NOTIFIABLE
    assert events.UPDATES_SUMMARY in events.NOTIFIABLE and events.LIBRARY_SCAN_DONE in events.NOTIFIABLE


def test_bus_refuses_an_undefined_event_and_survives_a_bad_subscriber():
    bus, seen = events.Bus(), []
    bus.subscribe(lambda e: 1 / 0)
    bus.subscribe(seen.append)
    with pytest.raises(ValueError, match="download.complete"):
        bus.publish("download.complete", {})
    bus.publish(events.DOWNLOAD_COMPLETED, {"id": 1})
    assert [e.name for e in seen] == [events.DOWNLOAD_COMPLETED]
