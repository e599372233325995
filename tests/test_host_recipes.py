"""The recipes of docs/host-integration.md (sections 7 and on) run as written against the real daemon."""
import contextlib
import io
import re
from pathlib import Path

from ruamel.yaml import YAML

from conftest import sha

DOC = (Path(__file__).resolve().parent.parent / "docs" / "host-integration.md").read_text()


def block(heading, lang):
    """The first ```lang block of the section whose title starts with `heading`."""
    section = DOC.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert found, f"no {lang} block in section {heading}"
    return found.group(1)


def run_python(code, **names):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "host-integration.md", "exec"), dict(names))  # noqa: S102 - the documented recipe
    return out.getvalue()


def test_comfyui_manager_recipe(make_daemon, fake, monkeypatch):
    config = YAML(typ="safe").load(block("7.", "yaml"))
    assert config["rpc_dir_map"] == {"/models": "."}
    daemon = make_daemon(api_token=config["api_token"], rpc_dir_map=config["rpc_dir_map"])
    blob = fake.add_blob("my-lora.safetensors", size=120_000, safetensors=True)
    monkeypatch.setenv("COMFYUI_MANAGER_ARIA2_SERVER", f"http://127.0.0.1:{daemon.port}")
    monkeypatch.setenv("COMFYUI_MANAGER_ARIA2_SECRET", config["api_token"])
    printed = run_python(block("7.", "python"), MODEL_URL=blob["url"])
    assert printed.strip() == "complete /models/loras/my-lora.safetensors"
    landed = daemon.home / "downloads" / "loras" / "my-lora.safetensors"
    assert sha(landed) == blob["sha256"]
