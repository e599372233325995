"""aria2's JSON-RPC (SPEC §13), driven by the real aria2p library against the real daemon."""
import json
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import aria2p
import pytest
import requests
import websocket

from conftest import sha, wait_for

SECRET = "rpc-secret-token"
VIEWER = "rpc-viewer-token"


def api_for(daemon, secret=SECRET):
    return aria2p.API(aria2p.Client(host="http://127.0.0.1", port=daemon.port, secret=secret, timeout=20))


def rpc(daemon, method, *params, token=SECRET, **kwargs):
    body = {"jsonrpc": "2.0", "id": "t", "method": method,
            "params": ([f"token:{token}"] if token else []) + list(params)}
    return requests.post(daemon.url + "/jsonrpc", data=json.dumps(body), timeout=20, **kwargs)


def until_done(download, timeout=60):
    def finished():
        download.update()
        return not (download.is_active or download.is_waiting)
    wait_for(finished, timeout, interval=0.1, message=f"gid {download.gid} to finish")
    return download


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(api_token=SECRET, viewer_token=VIEWER)


def test_add_with_dir_and_out_lands_verified_where_rpc_dir_map_says(daemon, fake):
    blob = fake.add_blob("rpc-model.safetensors", size=200_000, safetensors=True)
    api = api_for(daemon)
    heard = {"start": [], "complete": []}
    listener = threading.Thread(target=api.listen_to_notifications, daemon=True, kwargs=dict(
        on_download_start=lambda _api, gid: heard["start"].append(gid),
        on_download_complete=lambda _api, gid: heard["complete"].append(gid),
        timeout=1, handle_signals=False))
    listener.start()
    wait_for(lambda: listener.is_alive(), 5, message="listener")
    try:
        added = api.add_uris([blob["url"]], {"dir": "/models/checkpoints", "out": "sd15.safetensors",
                                             "checksum": f"sha-256={blob['sha256']}", "split": "16"})
        assert len(added.gid) == 16 and int(added.gid, 16) > 0
        until_done(added)
        assert added.is_complete, (added.status, added.error_message)
        assert added.dir == Path("/models/checkpoints")  # as the client sent it
        assert added.files[0].path == Path("/models/checkpoints/sd15.safetensors")
        assert added.total_length == added.completed_length == 200_000
        assert added.error_code == "0"
        wait_for(lambda: added.gid in heard["complete"], 20, message="onDownloadComplete")
        assert added.gid in heard["start"]
    finally:
        api.stop_listening()
        listener.join(10)
    real = daemon.home / "downloads" / "checkpoints" / "sd15.safetensors"
    assert real.exists() and sha(real) == blob["sha256"]
    listed = daemon.get(f"/api/downloads/{int(added.gid, 16)}").json()
    assert listed["verified"] is True and listed["path"] == str(real)

    everything = {d.gid: d for d in api.get_downloads()}
    assert everything[added.gid].is_complete
    stats = api.get_stats()
    assert stats.num_active == 0 and stats.num_waiting == 0 and stats.num_stopped_total >= 1
    version = api.client.get_version()
    assert version["version"] and version["civitai-daemon"]
    assert api.client.get_option(added.gid)["out"] == "sd15.safetensors"
    assert api.client.get_option(added.gid)["checksum"] == f"sha-256={blob['sha256']}"
    assert api.client.get_global_option()["dir"] == str(daemon.home / "downloads")
    assert api.client.change_option(added.gid, {"max-download-limit": "1M"}) == "OK"  # accepted, ignored

    # removeDownloadResult drops it from the stopped list only; the file and the history stay
    assert api.remove([everything[added.gid]]) == [True]
    assert added.gid not in {d.gid for d in api.get_downloads()}
    assert real.exists() and daemon.download(int(added.gid, 16))["state"] == "completed"


def test_a_wrong_checksum_fails_verified_and_is_an_error_status(daemon, fake):
    blob = fake.add_blob("rpc-bad.bin", size=5000)
    api = api_for(daemon)
    added = until_done(api.add_uris([blob["url"]], {"dir": "/models/vae", "checksum": "sha-256=" + "0" * 64}))
    assert added.has_failed and added.error_code == "1" and "SHA256" in added.error_message
    assert not (daemon.home / "downloads" / "vae" / "rpc-bad.bin").exists()


def test_pause_unpause_remove(daemon, fake):
    blob = fake.add_blob("rpc-slow.bin", size=400_000)
    fake.faults.rate = 20_000
    api = api_for(daemon)
    download = api.add_uris([blob["url"]], {"dir": "/models/loras", "out": "slow.bin"})
    wait_for(lambda: (download.update(), download.is_active and download.completed_length > 0)[1], 30,
             message="active with bytes")
    assert [d.gid for d in api.get_downloads() if d.is_active] == [download.gid]
    assert api.pause([download]) == [True]
    wait_for(lambda: (download.update(), download.is_paused)[1], 20, message="paused")
    part = daemon.home / "downloads" / "loras" / f"slow.bin.{int(download.gid, 16)}.part"  # its own part
    wait_for(part.exists, 10, message="the part kept")
    assert api.resume([download]) == [True]
    wait_for(lambda: (download.update(), download.is_active or download.is_waiting)[1], 20, message="resumed")
    assert api.client.remove(download.gid) == download.gid
    wait_for(lambda: (download.update(), download.is_removed)[1], 20, message="removed")
    wait_for(lambda: not part.exists(), 20, message="the part deleted")
    assert daemon.download(int(download.gid, 16))["state"] == "cancelled"
    stopped = api.client.tell_stopped(0, 100)
    assert download.gid in [s["gid"] for s in stopped]
    with pytest.raises(aria2p.ClientException) as refused:
        api.client.pause(download.gid)
    assert refused.value.code == 1 and "cannot be paused" in refused.value.message
    fake.faults.rate = 0


def test_secrets_and_read_only_token(daemon, fake):
    with pytest.raises(aria2p.ClientException) as wrong:
        api_for(daemon, "not-the-secret").get_downloads()
    assert wrong.value.code == 1 and "Unauthorized" in wrong.value.message
    with pytest.raises(aria2p.ClientException):
        api_for(daemon, None).client.tell_active()
    viewer = api_for(daemon, VIEWER)
    assert viewer.client.tell_active() == []
    assert viewer.get_stats().num_active == 0
    blob = fake.add_blob("rpc-viewer.bin", size=100)
    with pytest.raises(aria2p.ClientException) as read_only:
        viewer.add_uris([blob["url"]])
    assert "read-only" in read_only.value.message
    # listMethods needs no token, as in aria2
    methods = api_for(daemon, None).client.list_methods()
    for name in ("aria2.addUri", "aria2.tellStatus", "aria2.tellActive", "aria2.tellWaiting", "aria2.tellStopped",
                 "aria2.remove", "aria2.forceRemove", "aria2.pause", "aria2.forcePause", "aria2.unpause",
                 "aria2.removeDownloadResult", "aria2.getGlobalStat", "aria2.getVersion", "aria2.getOption",
                 "aria2.getGlobalOption", "aria2.changeOption", "system.multicall", "system.listMethods"):
        assert name in methods
    assert daemon.get("/api/downloads").json()["total"] == 0
    assert SECRET not in daemon.logs() and VIEWER not in daemon.logs()


@pytest.mark.parametrize("options", [
    {"dir": "/etc"}, {"dir": "../.."}, {"dir": "/models/../../etc"}, {"dir": "/models/x", "out": "/etc/passwd"},
    {"dir": "/models", "out": "../../escape.bin"}, {"dir": "C:\\Windows"}, {"out": "..\\..\\x.bin"},
])
def test_dirs_outside_the_mapped_folders_are_refused(daemon, fake, options):
    blob = fake.add_blob("rpc-escape.bin", size=100)
    with pytest.raises(aria2p.ClientException) as refused:
        api_for(daemon).add_uris([blob["url"]], options)
    assert refused.value.code == 1 and refused.value.message
    raw = rpc(daemon, "aria2.addUri", [blob["url"]], options)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == 1
    assert daemon.get("/api/downloads").json()["total"] == 0
    assert not fake.requests_to(prefix="/files/rpc-escape.bin")


def test_an_absolute_dir_inside_download_dir_is_accepted(daemon, fake):
    blob = fake.add_blob("rpc-inside.bin", size=1000)
    folder = daemon.home / "downloads" / "embeddings"
    download = until_done(api_for(daemon).add_uris([blob["url"]], {"dir": str(folder)}))
    assert download.is_complete and (folder / "rpc-inside.bin").exists()
    assert download.files[0].path == folder / "rpc-inside.bin"


def test_multicall_batch_and_the_websocket(daemon, fake):
    one, two = fake.add_blob("rpc-m1.bin", size=1000), fake.add_blob("rpc-m2.bin", size=1000)
    client = api_for(daemon).client
    results = client.multicall2([(client.ADD_URI, [[one["url"]], {"dir": "/models/a"}]),
                                 (client.ADD_URI, [[two["url"]], {"dir": "/etc"}]),
                                 (client.GET_VERSION, [])])
    assert len(results) == 3 and len(results[0][0]) == 16
    assert results[1]["code"] == 1 and "outside" in results[1]["message"]
    assert results[2][0]["version"]
    gid = results[0][0]
    wait_for(lambda: client.tell_status(gid, ["status"])["status"] == "complete", 30, message="multicall download")
    batch = client.batch_call([(client.TELL_STATUS, [gid, ["gid", "status"]], 1), (client.GET_GLOBAL_STAT, [], 2)])
    assert batch[0] == {"gid": gid, "status": "complete"} and batch[1]["numActive"] == "0"
    unknown = rpc(daemon, "aria2.tellStatus", "00000000000fffff")
    assert unknown.status_code == 400 and "not found" in unknown.json()["error"]["message"]
    assert rpc(daemon, "aria2.noSuchMethod").json()["error"]["code"] == -32601
    assert requests.post(daemon.url + "/jsonrpc", data=b"{", timeout=10).json()["error"]["code"] == -32700

    ws = websocket.create_connection(daemon.url.replace("http", "ws") + "/jsonrpc", timeout=20)
    try:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "aria2.tellStopped",
                            "params": [f"token:{SECRET}", -1, 1, ["gid", "status", "dir"]]}))
        answer = json.loads(ws.recv())
        assert answer["id"] == 7 and answer["result"] == [{"gid": gid, "status": "complete", "dir": "/models/a"}]
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "aria2.getGlobalStat", "params": ["token:bad"]}))
        assert json.loads(ws.recv())["error"]["message"].startswith("Unauthorized: the secret sent is not")
        three = fake.add_blob("rpc-m3.bin", size=1000)
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 9, "method": "aria2.addUri",
                            "params": [f"token:{SECRET}", [three["url"]], {"dir": "/models/b", "out": "three.bin"}]}))
        seen = []
        while not any(m.get("method") == "aria2.onDownloadComplete" for m in seen):
            seen.append(json.loads(ws.recv()))
        new_gid = next(m["result"] for m in seen if m.get("id") == 9)
        assert {"jsonrpc": "2.0", "method": "aria2.onDownloadStart", "params": [{"gid": new_gid}]} in seen
        assert {"jsonrpc": "2.0", "method": "aria2.onDownloadComplete", "params": [{"gid": new_gid}]} in seen
    finally:
        ws.close()
    assert (daemon.home / "downloads" / "b" / "three.bin").exists()


def test_comfyui_manager_aria2_path(daemon, fake, monkeypatch):
    """The calls ComfyUI-Manager's manager_downloader makes with COMFYUI_MANAGER_ARIA2_SERVER / _SECRET set."""
    blob = fake.add_blob("detail-tweaker.safetensors", size=150_000, safetensors=True)
    monkeypatch.setenv("COMFYUI_MANAGER_ARIA2_SERVER", f"http://127.0.0.1:{daemon.port}")
    monkeypatch.setenv("COMFYUI_MANAGER_ARIA2_SECRET", SECRET)
    server = urlparse(os.environ["COMFYUI_MANAGER_ARIA2_SERVER"])
    aria2 = aria2p.API(aria2p.Client(host=server.scheme + "://" + server.hostname, port=server.port,
                                     secret=os.environ["COMFYUI_MANAGER_ARIA2_SECRET"]))

    def find_task(folder, filename):
        target = os.path.join(folder, filename)
        for download in aria2.get_downloads():
            for file in download.files:
                if not file.is_metadata and str(file.path) == target:
                    return download
        return None

    def download_url(model_url, model_dir, filename):
        folder = model_dir if model_dir.startswith("/") else os.path.join("/models", model_dir)
        download = find_task(folder, filename)
        if download is None:
            download = aria2.add(model_url, {"dir": folder, "out": filename})[0]
        while download.is_active or download.is_waiting:  # Manager polls while active; waiting comes first here
            download.update()
        return download

    first = download_url(blob["url"], "loras", "detail-tweaker.safetensors")
    assert first.is_complete
    where = daemon.home / "downloads" / "loras" / "detail-tweaker.safetensors"
    assert where.exists() and sha(where) == blob["sha256"]
    # asked again (another workflow needs the same LoRA): the task is found by dir + out, nothing is added
    again = download_url(blob["url"], "loras", "detail-tweaker.safetensors")
    assert again.gid == first.gid
    assert daemon.get("/api/downloads").json()["total"] == 1


def test_a_refused_secret_says_what_to_do_and_a_good_one_needs_no_browser_rules(daemon):
    """With api_token set the secret in the call guards it: AriaNg on another origin or a reverse proxy's
    Host works with it; a missing or wrong secret is refused with what to do, never with the secret echoed."""
    proxied = {"Host": f"models.example.org:{daemon.port}"}
    cross_origin = {"Origin": "http://ariang.example"}
    for headers in ({}, proxied, cross_origin):
        assert rpc(daemon, "aria2.tellActive", headers=headers).json() == {"jsonrpc": "2.0", "id": "t",
                                                                            "result": []}
        missing = rpc(daemon, "aria2.tellActive", token=None, headers=headers)
        assert missing.status_code == 400
        assert missing.json()["error"]["message"].startswith("Unauthorized: no secret was sent; pass "
                                                             '"token:<api_token>"')
        wrong = rpc(daemon, "aria2.tellActive", token="guessed-secret-123", headers=headers)
        message = wrong.json()["error"]["message"]
        assert wrong.status_code == 400 and message.startswith("Unauthorized: the secret sent is not")
        assert "guessed-secret-123" not in wrong.text and "without an api_token" not in message
    ws = websocket.create_connection(daemon.url.replace("http", "ws") + "/jsonrpc", timeout=10,
                                     origin="http://ariang.example")
    try:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "aria2.tellActive", "params": [f"token:{SECRET}"]}))
        assert json.loads(ws.recv()) == {"jsonrpc": "2.0", "id": 1, "result": []}
    finally:
        ws.close()
    assert "guessed-secret-123" not in daemon.logs()


def test_tokenless_rpc_follows_the_rest_api_browser_rules(make_daemon, fake):
    daemon = make_daemon()
    assert api_for(daemon, None).client.tell_active() == []
    blob = fake.add_blob("rpc-open.bin", size=100)
    forged = rpc(daemon, "aria2.addUri", [blob["url"]], token=None, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and "cross-site" in forged.json()["error"]["message"]
    rebound = rpc(daemon, "aria2.tellActive", token=None, headers={"Host": f"evil.example:{daemon.port}"})
    assert rebound.status_code == 403 and "set api_token" in rebound.json()["error"]["message"]
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(daemon.url.replace("http", "ws") + "/jsonrpc", timeout=10,
                                    origin="http://evil.example")
    assert requests.options(daemon.url + "/jsonrpc", timeout=10).status_code == 403
    assert daemon.get("/api/downloads").json()["total"] == 0
    gid = api_for(daemon, None).add_uris([blob["url"]], {"dir": "/models"}).gid
    wait_for(lambda: rpc(daemon, "aria2.tellStatus", gid, token=None).json()["result"]["status"] == "complete", 20,
             message="tokenless download")
    assert (daemon.home / "downloads" / "rpc-open.bin").exists()


def test_rpc_dir_map_outside_download_dir_stops_the_daemon(make_daemon, tmp_path):
    daemon = make_daemon(start=False, rpc_dir_map={"/models": str(tmp_path / "elsewhere")})
    daemon.write_config()
    with pytest.raises(AssertionError):
        daemon.start()
    assert daemon.proc.wait(10) == 2
    assert "rpc_dir_map" in daemon.read_stderr() and "outside download_dir" in daemon.read_stderr()


def test_a_token_in_the_uri_never_comes_back(daemon, fake):
    blob = fake.add_blob("rpc-signed.bin", size=2000)
    signed = blob["url"] + "?token=uri-secret-123&X-Amz-Signature=sig-secret-456"
    api = api_for(daemon)
    download = until_done(api.add_uris([signed], {"dir": "/models/private"}))
    assert download.is_complete
    answers = json.dumps([api.client.tell_status(download.gid), api.client.get_uris(download.gid),
                          api.client.tell_stopped(0, 10), api.client.get_option(download.gid)])
    assert "uri-secret-123" not in answers and "sig-secret-456" not in answers
    assert "uri-secret-123" not in daemon.logs()


def test_sigterm_with_a_jsonrpc_websocket_open_stops_cleanly(daemon):
    ws = websocket.create_connection(daemon.url.replace("http", "ws") + "/jsonrpc", timeout=20)
    try:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "system.listMethods"}))
        assert "aria2.addUri" in json.loads(ws.recv())["result"]
        assert daemon.stop() == 0
    finally:
        ws.close()
