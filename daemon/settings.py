"""The declared settings of config.yaml: each one's name, default, validator and help.

Each setting is declared once; the default config file, validation (config.py)
and the README's table all come from SETTINGS.
"""
import dataclasses
import re

from . import events
from .states import POLICIES

DEFAULT_TYPE_DIRS = {
    "Checkpoint": "Stable-diffusion",
    "LORA": "Lora",
    "LoCon": "Lora",
    "DoRA": "Lora",
    "TextualInversion": "embeddings",
    "VAE": "VAE",
    "Controlnet": "ControlNet",
    "Upscaler": "ESRGAN",
    "Hypernetwork": "hypernetworks",
    "MotionModule": "AnimateDiff",
    "Other": "Other",
}

# One summary per update check instead of one message per update (SPEC §11).
DEFAULT_TELEGRAM_EVENTS = [events.DOWNLOAD_COMPLETED, events.DOWNLOAD_FAILED, events.MANIFEST_FAILED,
                           events.UPDATES_SUMMARY]
EVENT_NAMES = events.NOTIFIABLE
DEFAULT_LIBRARY_EXTENSIONS = [".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}


def is_postgres_url(value):
    """True for a `database` value naming a PostgreSQL server rather than an SQLite file."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def parse_rate(value):
    """Bytes per second from 0, 5000000 or strings like '20MB', '1.5MiB'."""
    if isinstance(value, bool):
        raise ValueError("expected a number of bytes/s or a string such as \"20MB\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return int(value)
    match = _RATE.match(str(value))
    if not match:
        raise ValueError("expected bytes/s or a string such as \"20MB\" or \"10MiB\"")
    unit = (match.group(2) or "").upper().rstrip("B") if match.group(2) not in (None, "B", "b") else ""
    return int(float(match.group(1)) * _UNITS[unit])


def parse_size(value):
    """Bytes from 67108864 or strings like '64MiB', '100MB' (read like `throttle`), at least 1 MiB."""
    try:
        size = parse_rate(value)
    except ValueError:
        raise ValueError("expected bytes or a size such as \"64MiB\" or \"100MB\"") from None
    if size < 2**20:
        raise ValueError("must be at least 1MiB (1048576 bytes)")
    return size


def _port(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("expected null or a port number 1-65535")
    return value


def _int(minimum, maximum=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"expected an integer from {minimum} to {maximum or 'any'}")
        return value
    return check


def _number(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        if value < minimum:
            raise ValueError(f"expected a number ≥ {minimum}")
        return float(value)
    return check


def _str(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _opt_str(value):
    return None if value is None else _str(value)


def _url(value):
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/")


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _level(value):
    if not isinstance(value, str) or value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value.upper()


def _time(value):
    if not isinstance(value, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$", value):
        raise ValueError('expected a time "HH:MM" or "HH:MM:SS" (24 h, quoted)')
    return value


def _type_dirs(value):
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of model type to folder")
    result = dict(DEFAULT_TYPE_DIRS)
    for key, folder in value.items():
        if not isinstance(key, str) or not isinstance(folder, str) or not folder:
            raise ValueError(f"entry {key!r} must map a type name to a folder name")
        if folder.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", folder):
            raise ValueError(f"folder for {key!r} must be relative to download_dir without '..'")
        result[str(key)] = str(folder)
    return result


def _rpc_dir_map(value):
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a mapping of client folder (e.g. \"/models\") to a folder inside download_dir")
    for prefix, folder in value.items():
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"key {prefix!r} must be an absolute client folder such as \"/models\"")
        if not isinstance(folder, str) or not folder or ".." in re.split(r"[\\/]", folder):
            raise ValueError(f"folder for {prefix!r} must be a path without '..' (relative = under download_dir)")
    return {str(k): str(v) for k, v in value.items()}


def _policy(value):
    if value not in POLICIES:
        raise ValueError(f"expected one of {', '.join(POLICIES)}")
    return value


def _roots(value):
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of folders (or null for [download_dir])")
    return list(value)


def _extensions(value):
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of file extensions such as [\".safetensors\", \".ckpt\"]")
    return sorted({("." + v.lstrip(".")).lower() for v in value})


def _rescan(value):
    if value not in ("daily", "off"):
        raise ValueError('expected "daily" or "off"')
    return value


def _threads(value):
    return None if value is None else _int(1, 64)(value)


def _webui_refresh(value):
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"url"}:
        raise ValueError("expected null or {\"url\": \"http://127.0.0.1:7860\"} (the A1111/Forge web UI, started "
                         "with --api)")
    return {"url": _url(value["url"])}


def _events(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of event names")
    unknown = [v for v in value if v not in EVENT_NAMES]
    if unknown:
        raise ValueError(f"unknown event {unknown[0]!r}; allowed: {', '.join(EVENT_NAMES)}")
    return list(value)


def _chat_id(value):
    if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
        return value
    raise ValueError("expected an integer or a string such as \"@channel\"")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: object
    check: object
    help: str
    path: bool = False


SETTINGS = [
    Setting("inbox_dir", "inbox", _str, "manifests are dropped here", path=True),
    Setting("processing_dir", "processing", _str, "manifests being worked on", path=True),
    Setting("done_dir", "done", _str, "finished manifests and their result files", path=True),
    Setting("failed_dir", "failed", _str, "rejected or failed manifests and their result files", path=True),
    Setting("download_dir", "downloads", _str, "root of all downloaded files", path=True),
    Setting("logs_dir", "logs", _str, "download.log and error.log", path=True),
    Setting("database", "completed.db", _str, "the SQLite file, or a PostgreSQL URL postgresql://user:password@host"
            "[:port]/db shared by a fleet of daemons", path=True),
    Setting("node", None, _opt_str, "this daemon's name in a fleet (null: the host name); unique per daemon"),
    Setting("lease", 60, _int(5, 86400), "fleet mode: seconds a claim lasts without renewal before another daemon "
            "may take the download over"),
    Setting("host", "127.0.0.1", _str, "address the web server binds (0.0.0.0 exposes it to the LAN: set api_token)"),
    Setting("active_port", None, _port, "null: pick a free port in 8100-8200 and write it here; a number: use it"),
    Setting("workers", 2, _int(1, 32), "parallel downloads"),
    Setting("retries", 5, _int(0, 100), "attempts after the first, per download"),
    Setting("backoff", 1, _number(0), "seconds before the first retry; doubles each time"),
    Setting("backoff_max", 60, _number(0), "longest wait between retries, seconds"),
    Setting("timeout", 30, _number(1), "seconds for connect and for each read (and the stall window)"),
    Setting("throttle", 0, parse_rate, "total rate cap over all workers: bytes/s or \"20MB\", \"10MiB\"; 0 = unlimited"),
    Setting("connections", 4, _int(1, 16), "connections per download for files of at least 2 × segment_min from "
            "servers that support ranges; 1 = one connection (segmenting off)"),
    Setting("max_connections_per_host", 4, _int(1, 64), "connections to one host across all downloads"),
    Setting("segment_min", "64MiB", parse_size, "smallest segment of a download over several connections: bytes "
            "or \"64MiB\", \"100MB\""),
    Setting("webhook_url", None, _url, "where event JSON is POSTed"),
    Setting("webhook_secret", None, _opt_str, "HMAC-SHA256 key for the X-Civitai-Daemon-Signature header"),
    Setting("log_level", "INFO", _level, "DEBUG, INFO, WARNING or ERROR"),
    Setting("civitai_base_url", "https://civitai.com", _url, "Civitai API and download host"),
    Setting("civitai_token", None, _opt_str, "Civitai API token (env CIVITAI_API_TOKEN overrides)"),
    Setting("api_token", None, _opt_str, "when set, /api/* and /ws/* need Authorization: Bearer <token>"),
    Setting("viewer_token", None, _opt_str, "read-only token: GET routes and the live feed only"),
    Setting("telegram", {"bot_token": None, "chat_id": None, "events": DEFAULT_TELEGRAM_EVENTS}, None,
            "Telegram notifications: bot_token, chat_id, events"),
    Setting("telegram_api_base", "https://api.telegram.org", _url, "Telegram Bot API host"),
    Setting("type_dirs", DEFAULT_TYPE_DIRS, _type_dirs, "model type → sub-folder of download_dir"),
    Setting("sidecars", True, _bool, "write <stem>.civitai.info and <stem>.preview.<ext> beside Civitai files"),
    Setting("rpc_dir_map", {"/models": "."}, _rpc_dir_map,
            "aria2 JSON-RPC: the dir a client sends → a folder inside download_dir (relative to it; . = itself)"),
    Setting("webui_refresh", None, _webui_refresh,
            "A1111/Forge to tell about new files: {url: http://127.0.0.1:7860} (needs --api); null = off"),
    Setting("huggingface_token", None, _opt_str, "Hugging Face token for gated models (env HF_TOKEN overrides)"),
    Setting("huggingface_base_url", "https://huggingface.co", _url,
            "where the Hugging Face token may go (that scheme, host and port only)"),
    Setting("update_check", {"enabled": True, "time": "04:00", "auto_download": True, "policy": "alongside"}, None,
            "daily check for new model versions: enabled, time (\"HH:MM\" or \"HH:MM:SS\", local), auto_download, "
            "policy (notify|alongside|replace)"),
    Setting("library", {"roots": None, "extensions": DEFAULT_LIBRARY_EXTENSIONS, "scan_on_start": True,
                        "rescan": "daily", "hash_threads": None}, None,
            "the models you already have: roots (null = [download_dir]), extensions, scan_on_start, "
            "rescan (daily|off), hash_threads (null = CPU cores)"),
]

NESTED = {
    "telegram": {"bot_token": _opt_str, "chat_id": _chat_id, "events": _events},
    "update_check": {"enabled": _bool, "time": _time, "auto_download": _bool, "policy": _policy},
    "library": {"roots": _roots, "extensions": _extensions, "scan_on_start": _bool, "rescan": _rescan,
                "hash_threads": _threads},
}

SECRET_KEYS = ("civitai_token", "api_token", "viewer_token", "webhook_secret", "huggingface_token")
