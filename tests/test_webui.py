"""webui_refresh (SPEC §13): a fake A1111 records the refresh calls the real daemon makes."""
import datetime

import pytest

from conftest import wait_for
from daemon.settings import DEFAULT_TYPE_DIRS
from daemon.webui import INTERVAL, kind_of
from receivers import Receiver, refused_url


def test_kind_from_the_civitai_type_else_the_folder(tmp_path):
    root = tmp_path / "models"
    assert kind_of({"model_type": "LoCon", "path": str(root / "x" / "a.bin")}, DEFAULT_TYPE_DIRS, root) == "loras"
    assert kind_of({"model_type": None, "path": str(root / "Stable-diffusion" / "sd" / "a.ckpt")},
                   DEFAULT_TYPE_DIRS, root) == "checkpoints"
    assert kind_of({"path": str(root / "vae" / "a.pt")}, DEFAULT_TYPE_DIRS, root) == "vae"
    assert kind_of({"path": str(root / "embeddings" / "a.pt")}, DEFAULT_TYPE_DIRS, root) == "embeddings"
    assert kind_of({"model_type": "Upscaler", "path": str(root / "ESRGAN" / "a.pth")}, DEFAULT_TYPE_DIRS, root) is None


@pytest.fixture
def a1111():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def refreshes(receiver, kind=None):
    return [p for p in list(receiver.posts) if kind is None or p["path"] == f"/sdapi/v1/refresh-{kind}"]


def _time(iso):
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_each_kind_is_refreshed_after_its_files_complete(make_daemon, fake, a1111):
    for model_id, kind in ((8101, "Checkpoint"), (8102, "LORA"), (8103, "VAE"), (8104, "TextualInversion"),
                           (8105, "Upscaler")):
        fake.add_model(model_id, f"Kind {kind}", kind)
        fake.add_version(model_id, model_id * 10 + 1, "v1", size=2000)
    daemon = make_daemon(webui_refresh={"url": a1111.url})
    ids = [daemon.post("/api/download", {"modelVersionId": m * 10 + 1}).json()["id"]
           for m in (8101, 8102, 8103, 8104, 8105)]
    for download_id in ids:
        daemon.wait_state(download_id, "completed", 60)
    for kind in ("checkpoints", "loras", "vae", "embeddings"):
        wait_for(lambda: refreshes(a1111, kind), 30, message=f"refresh-{kind}")
    assert {p["path"] for p in refreshes(a1111)} == {f"/sdapi/v1/refresh-{k}" for k in
                                                     ("checkpoints", "loras", "vae", "embeddings")}


def test_a_burst_is_debounced_with_one_call_after_the_last_file(make_daemon, fake, a1111):
    daemon = make_daemon(webui_refresh={"url": a1111.url}, workers=3)
    blobs = [fake.add_blob(f"burst{i}.bin", size=3000 + i) for i in range(8)]
    daemon.drop("burst.json", {"items": [{"url": b["url"], "subdir": "Lora"} for b in blobs]})
    folder, result = daemon.result("burst.json", 60)
    assert folder == "done"
    last_done = max(_time(daemon.download(i["id"])["finished_at"]) for i in result["items"])
    wait_for(lambda: any(p["time"] >= last_done for p in refreshes(a1111, "loras")), 30,
             message="a refresh after the last file")
    calls = [p["time"] for p in refreshes(a1111, "loras")]
    assert 1 <= len(calls) < len(blobs)
    assert all(later - earlier >= INTERVAL - 0.1 for earlier, later in zip(calls, calls[1:])), calls
    assert refreshes(a1111) == refreshes(a1111, "loras")  # nothing else was refreshed


@pytest.mark.parametrize("dead", ["refused", "hanging"])
def test_a_dead_web_ui_never_holds_up_downloads(make_daemon, fake, dead):
    hanging = Receiver(delay=120).start() if dead == "hanging" else None
    try:
        url = hanging.url if hanging else refused_url().rsplit("/", 1)[0]
        daemon = make_daemon(webui_refresh={"url": url})
        for i in range(3):  # one after another: each completes while the refresher is stuck or failing
            blob = fake.add_blob(f"dead-{dead}-{i}.bin", size=4000)
            download_id = daemon.post("/api/download", {"url": blob["url"], "subdir": "Lora"}).json()["id"]
            daemon.wait_state(download_id, "completed", 30)
        if hanging:
            wait_for(lambda: hanging.posts, 20, message="the refresh call reaching the hanging web UI")
            assert daemon.get("/api/status").json()["counts"]["completed"] == 3
        else:
            wait_for(lambda: "web UI refresh" in daemon.logs(), 20, message="the failed refresh logged")
            assert daemon.logs().count("web UI refresh") == 1  # logged once, not once per file
        assert daemon.get("/healthz").json() == {"ok": True}
    finally:
        if hanging:
            hanging.stop()
