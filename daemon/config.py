"""config.yaml: read and validate it into Settings (from the declared SETTINGS), the commented default
file, and writing active_port back."""
import io
import os
from pathlib import Path
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import ConfigError
from .settings import NESTED, SECRET_KEYS, SETTINGS, is_postgres_url


class Settings:
    """Validated settings; attributes named as in config.yaml, paths absolute."""

    def __init__(self, values, config_path):
        self.__dict__.update(values)
        self.config_path = Path(config_path)

    def secrets(self):
        """Every secret value in force, for log redaction."""
        values = [getattr(self, key) for key in SECRET_KEYS]
        values.append(self.telegram.get("bot_token"))
        if is_postgres_url(self.database):
            values.append(urlsplit(self.database).password)
        return [v for v in values if v]


def _yaml():
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.add_representer(
        type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _yaml_scalar(value):
    if isinstance(value, str) and ":" in value and "://" not in value:
        return f'"{value}"'  # "04:00" must stay a string for every YAML reader
    buffer = io.StringIO()
    _yaml().dump({"k": value}, buffer)
    return buffer.getvalue().split(":", 1)[1].strip()


def default_config_text():
    """The commented default config.yaml, generated from SETTINGS."""
    lines = ["# civitai-daemon configuration. Relative paths resolve against this file's folder.",
             "# Unknown keys or wrong types stop the daemon with exit code 2.", ""]
    for setting in SETTINGS:
        lines.append(f"# {setting.help}")
        if isinstance(setting.default, dict):
            lines.append(f"{setting.name}:")
            for key, value in setting.default.items():
                if isinstance(value, list):
                    lines.append(f"  {key}:")
                    lines.extend(f"    - {item}" for item in value)
                else:
                    lines.append(f"  {key}: {_yaml_scalar(value)}")
        else:
            value = _yaml_scalar(setting.default)
            lines.append(f"{setting.name}: {value}")
        lines.append("")
    return "\n".join(lines)


def _validate_nested(name, raw, default):
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict):
        raise ConfigError(f"config.yaml: '{name}' must be a mapping with keys {', '.join(NESTED[name])}")
    result = dict(default)
    for key, value in raw.items():
        if key not in NESTED[name]:
            raise ConfigError(f"config.yaml: unknown key '{name}.{key}' (allowed: {', '.join(NESTED[name])})")
        try:
            result[key] = NESTED[name][key](value)
        except ValueError as exc:
            raise ConfigError(f"config.yaml: '{name}.{key}' {exc}, got {value!r}") from None
    return result


def load(config_path):
    """Read and validate config.yaml, creating it with the defaults when missing."""
    config_path = Path(config_path).absolute()
    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(default_config_text(), encoding="utf-8")
    try:
        raw = _yaml().load(config_path.read_text(encoding="utf-8")) or {}
    except (YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config.yaml: not valid YAML ({first}); fix the file or delete it to get the defaults") from None
    except OSError as exc:
        raise ConfigError(f"config.yaml: cannot read {config_path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config.yaml: the top level must be a mapping of settings")
    known = {s.name: s for s in SETTINGS}
    for key in raw:
        if key not in known:
            raise ConfigError(f"config.yaml: unknown key '{key}' (check the spelling; see the README's config table)")
    values = {}
    for setting in SETTINGS:
        value = raw.get(setting.name, setting.default)
        if setting.name in NESTED:
            values[setting.name] = _validate_nested(setting.name, raw.get(setting.name), setting.default)
            continue
        try:
            value = setting.check(value)
        except ValueError as exc:
            raise ConfigError(f"config.yaml: '{setting.name}' {exc}, got {value!r}") from None
        if setting.path and not is_postgres_url(value):
            value = (config_path.parent / os.path.expanduser(value)).resolve()
        values[setting.name] = value
    _finish_library(values, config_path)
    for key, env in (("civitai_token", "CIVITAI_API_TOKEN"), ("huggingface_token", "HF_TOKEN")):
        if os.environ.get(env):
            values[key] = os.environ[env]
    return Settings(values, config_path)


def _finish_library(values, config_path):
    """Library roots become absolute folders (download_dir when unset); hash_threads the core count."""
    library = values["library"]
    roots = library["roots"] or [str(values["download_dir"])]
    library["roots"] = [(config_path.parent / os.path.expanduser(root)).resolve() for root in roots]
    library["hash_threads"] = library["hash_threads"] or os.cpu_count() or 1


def write_active_port(config_path, port):
    """Write active_port back into config.yaml, keeping comments and key order."""
    config_path = Path(config_path)
    yaml = _yaml()
    text = config_path.read_text(encoding="utf-8")
    data = yaml.load(text)
    tmp = config_path.with_name(f".{config_path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        if data is None:  # an empty or comments-only file has no mapping to update: append the key
            separator = "\n" if text and not text.endswith("\n") else ""
            handle.write(f"{text}{separator}active_port: {port}\n")
        else:
            data["active_port"] = port
            yaml.dump(data, handle)
    # The file may hold tokens: the rewritten one keeps the user's permissions (e.g. 0600).
    os.chmod(tmp, config_path.stat().st_mode & 0o7777)
    os.replace(tmp, config_path)
