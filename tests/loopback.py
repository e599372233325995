"""Run a test's own HTTP server on a thread: shared by the fake Civitai, the receivers and the tests' servers."""
import threading

# shutdown() returns only once serve_forever next looks at its flag, up to one poll later; every test
# stops a server or two, so a short poll keeps that off the suite's time (it costs a few wake-ups a second).
POLL_SECONDS = 0.01


def serve(server, name="loopback"):
    """Start server.serve_forever on a daemon thread; stop it with server.shutdown(), then server_close()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, name=name,
                              daemon=True)
    thread.start()
    return thread
