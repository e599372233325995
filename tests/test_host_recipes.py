"""The recipes of docs/host-integration.md (sections 7 and on) run as written against the real daemon."""
import contextlib
import json
import subprocess
import io
import re
from pathlib import Path

from ruamel.yaml import YAML

from conftest import sha, wait_for

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

def test_workflow_drop_recipe(make_daemon, fake):
    daemon = make_daemon()
    blob = fake.add_blob("recipe-base.safetensors", size=5000, safetensors=True)
    helpers = block("3.", "python").split("\n\nname = submit(")[0]  # section 3's functions, not its example run
    helpers = helpers.replace('DAEMON = Path("/srv/civitai-daemon")', "")  # this test's daemon instead
    printed = run_python(helpers + "\n" + block("8.", "python"), DAEMON=daemon.home, MODEL_URL=blob["url"])
    assert printed.strip() == "nodes[0].properties.models[0]"
    assert sha(daemon.home / "downloads" / "checkpoints" / "base.safetensors") == blob["sha256"]

def test_image_drop_recipe(make_daemon, fake, tmp_path):
    from test_hostfiles import png
    fake.add_model(9301, "Recipe Base", "Checkpoint")
    base = fake.add_version(9301, 93011, "v1", size=3000)
    daemon = make_daemon()
    image = tmp_path / "00001-123.png"
    image.write_bytes(png({"parameters": f"x\nSteps: 20, Model hash: {base['sha256'][:10]}, Version: v1.9"}))
    script = block("9.", "bash").replace("daemon=/srv/civitai-daemon", f"daemon={daemon.home}")
    script = script.replace("~/Pictures/00001-123.png", str(image))
    done = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "done" and result["items"][0]["source"] == "Model hash"
    assert sha(daemon.home / "downloads" / "Stable-diffusion" / base["filename"]) == base["sha256"]

def test_a1111_refresh_recipe(make_daemon, fake):
    from receivers import Receiver
    a1111 = Receiver().start()
    try:
        config = YAML(typ="safe").load(block("10.", "yaml"))
        assert config == {"webui_refresh": {"url": "http://127.0.0.1:7860"}}
        daemon = make_daemon(webui_refresh={"url": a1111.url})
        fake.add_model(9401, "Recipe LoRA", "LORA")
        fake.add_version(9401, 94011, "v1", size=2000)
        daemon.wait_state(daemon.post("/api/download", {"modelVersionId": 94011}).json()["id"], "completed")

        wait_for(lambda: a1111.posts, 30, message="the refresh call")
        assert [p["path"] for p in a1111.posts] == ["/sdapi/v1/refresh-loras"]
        by_hand = block("10.", "bash").replace("http://127.0.0.1:7860", a1111.url)
        assert subprocess.run(["bash", "-euc", by_hand], capture_output=True, timeout=30).returncode == 0
        assert [p["path"] for p in a1111.posts][1:] == ["/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras"]
    finally:
        a1111.stop()
