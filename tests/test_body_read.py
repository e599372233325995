"""Request bodies are read without holding the hub (issue 11 item 15): a chunked body never freezes the web side."""
import socket

import pytest
import requests

# Tiny chunks are the costly case: every chunk header is parsed on the way in.
CHUNK = b"1\r\nx\r\n"
BODY_BYTES = 1 << 20  # 1 MB of payload froze /healthz for ~20 s when bottle de-chunked it on the hub


def open_chunked(daemon, path, payload_bytes):
    """A connection that has sent a chunked POST of `payload_bytes` and never sends the closing chunk."""
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sock.sendall(CHUNK * payload_bytes)
    return sock


@pytest.mark.parametrize("path", ["/api/download", "/jsonrpc"])
def test_a_trickled_chunked_body_leaves_healthz_and_sigterm_working(make_daemon, path):
    daemon = make_daemon()
    sock = open_chunked(daemon, path, BODY_BYTES)
    try:
        # The bound is generous for a loaded machine yet far below the old ~20 s freeze.
        for _ in range(3):
            assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200
        assert daemon.get("/api/status").status_code == 200
        daemon.proc.send_signal(15)
        daemon.proc.wait(10)  # raises TimeoutExpired when SIGTERM is ignored
        assert daemon.proc.returncode == 0, daemon.read_stderr()[-2000:]
    finally:
        sock.close()


def test_an_oversized_chunked_body_is_a_413_json_error(make_daemon):
    daemon = make_daemon()
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    try:
        sock.sendall(b"POST /api/download HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        piece = b"x" * (1 << 20)
        try:
            for _ in range(40):  # 40 MiB: over the 32 MiB bound; the daemon may answer before it has all
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error": "body larger than 32 MiB"' in answer, answer[-300:]
    assert requests.get(daemon.url + "/healthz", timeout=10).status_code == 200
