"""Text chunks of a PNG (tEXt, zTXt, iTXt) with the standard library only (SPEC §13).

Why not Pillow: reading text chunks needs no image decoding; Pillow would add
a native dependency of several MB for it, and an untrusted file dropped into
inbox/ should never reach an image decoder. `struct` walks the chunks, `zlib`
checks each CRC and inflates compressed text with a size cap.
"""
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 16 << 20      # all inflated text of one file together; a zip bomb (or many small ones) stops here
INCOMPLETE = "image: incomplete PNG"  # the watcher waits for a file that reads like this (still being written)


class PngError(ValueError):
    """The file is not a readable PNG; the message says what is wrong."""


def _inflate(data, where, budget):
    if budget[0] <= 0:  # (a max_length of 0 would mean no limit at all)
        raise PngError(f"image: its text chunks inflate to more than {MAX_TEXT >> 20} MiB in all (at {where})")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, budget[0])
    except zlib.error as exc:
        raise PngError(f"image: the compressed {where} chunk is corrupt ({exc})") from None
    if inflater.unconsumed_tail:
        raise PngError(f"image: its text chunks inflate to more than {MAX_TEXT >> 20} MiB in all (at {where})")
    budget[0] -= len(text)
    return text


def _text(kind, data, budget):
    keyword, sep, rest = data.partition(b"\x00")
    if not sep or not keyword:
        raise PngError(f"image: a {kind} chunk has no keyword")
    name = keyword.decode("latin-1")
    if kind == "tEXt":
        return name, rest.decode("latin-1")
    if kind == "zTXt":
        if not rest or rest[0] != 0:
            raise PngError(f"image: zTXt chunk {name!r} uses an unknown compression method")
        return name, _inflate(rest[1:], f"zTXt {name!r}", budget).decode("latin-1")
    if len(rest) < 2:  # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
        raise PngError(f"image: iTXt chunk {name!r} is cut short")
    compressed, body = rest[0], rest[2:]
    parts = body.split(b"\x00", 2)
    if len(parts) != 3:
        raise PngError(f"image: iTXt chunk {name!r} is malformed")
    text = _inflate(parts[2], f"iTXt {name!r}", budget) if compressed else parts[2]
    try:
        return name, text.decode("utf-8")
    except UnicodeDecodeError:
        raise PngError(f"image: iTXt chunk {name!r} is not UTF-8") from None


def text_chunks(data):
    """{keyword: text} of every text chunk (the first of each keyword wins); PngError when malformed."""
    if not data.startswith(SIGNATURE):
        if SIGNATURE.startswith(data):
            raise PngError(f"{INCOMPLETE} (only {len(data)} bytes)")
        raise PngError("image: not a PNG file (wrong signature); drop PNG images saved by ComfyUI, A1111 or Forge")
    found = {}
    budget = [MAX_TEXT]  # shared by every compressed chunk: 40 bombs of 16 MiB each once took 730 MB
    offset = len(SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise PngError(f"{INCOMPLETE} (it ends after {len(data)} bytes without an IEND chunk)")
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 8 + length + 4
        if length > 0x7FFFFFFF:
            raise PngError(f"image: chunk at byte {offset} claims {length} bytes; the file is corrupt")
        if end > len(data):
            raise PngError(f"{INCOMPLETE} (a {kind.decode('latin-1')!r} chunk is cut short)")
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(kind + body) != crc:
            raise PngError(f"image: the {kind.decode('latin-1')!r} chunk at byte {offset} fails its CRC; "
                           "the file is corrupt")
        name = kind.decode("latin-1")
        if name in ("tEXt", "zTXt", "iTXt"):
            key, text = _text(name, body, budget)
            found.setdefault(key, text)
        elif name == "IEND":
            return found
        offset = end
