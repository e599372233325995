"""What the first bytes of a download show it to be instead of a model file: an HTML page, a JSON or
text message, a .safetensors file whose header does not parse (the publication gate's format checks)."""
import json
import os
import struct

SNIFF = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--")


# Names a server may rightly send as text: an error page check would refuse them.
TEXT_NAMES = (".txt", ".json", ".yaml", ".yml", ".md", ".html", ".htm", ".xml", ".svg", ".csv", ".toml", ".ini",
              ".cfg", ".py", ".js")
BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
SMALL_BODY = 64 << 10  # an error message is short; a model file never is


def _stripped(head):
    for bom in BOMS:
        if head.startswith(bom):
            head = head[len(bom):]
            break
    return head.lstrip()


def sniff_problem(head, filename=None):
    """What the first bytes of a model file show it to be instead (an HTML or XML page), or None."""
    if filename and filename.lower().endswith(TEXT_NAMES):
        return None
    if _stripped(head[:1024]).lower().startswith(SNIFF):
        return "an HTML page"
    return None


def small_body_problem(fd, size, filename):
    """What a short non-text download is instead of a model file (a JSON or plain-text message), or None."""
    name = (filename or "").lower()
    if size > SMALL_BODY or name.endswith(TEXT_NAMES) or name.endswith(".safetensors"):
        return None
    data = _stripped(os.pread(fd, size, 0))
    if data[:1] in (b"{", b"["):
        try:
            json.loads(data)
            return f"a JSON message ({data[:120].decode('utf-8', 'replace')})"
        except ValueError:
            pass
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return f"a short text message ({text[:120].strip()!r})"
    return None


def safetensors_problem(fd, size):
    """Why the open file `fd` is not a parseable .safetensors, or None."""
    if size < 8:
        return "too small to be a .safetensors file"
    (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if length == 0 or length > 100 * 2**20 or 8 + length > size:
        return f"header length {length} does not fit a {size}-byte file"
    try:
        header = json.loads(os.pread(fd, length, 8))
    except ValueError:
        return "header is not JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    return None
