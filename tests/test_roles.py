"""api_token (admin) and viewer_token (read-only): every GET route and the feed for a viewer, 403 on every
state-changing route — enumerated from the app's own route table and the OpenAPI document, so a new route
cannot slip past — and a GUI that hides what a viewer cannot do."""
import json
import re

import pytest
import requests
import websocket

from test_gui import Page, expect

ADMIN = "roles-admin-token"
VIEWER = "roles-viewer-token"


class _Settings:
    api_token = viewer_token = None


def route_table():
    """(method, bottle rule) of every route the web app serves."""
    from daemon.web.app import WebApp
    return [(route.method, route.rule) for route in WebApp(_Settings(), None, None, None).app.routes]


def openapi_operations():
    from daemon.web import openapi
    for path, item in openapi.document("x")["paths"].items():
        for method in item:
            yield method.upper(), path


def concrete(rule, download_id):
    """Real paths for a bottle rule or an OpenAPI path template; an unknown parameter fails the test."""
    from daemon.states import ACTIONS
    rule = re.sub(r"{(\w+)}|<(\w+)(?::[^>]*)?>", lambda m: f"<{m.group(1) or m.group(2)}>", rule)
    if "<action>" in rule:
        return [p for a in ACTIONS for p in concrete(rule.replace("<action>", a), download_id)]
    samples = {"<download_id>": str(download_id), "<path>": "main.js", "<model_id>": "7301"}
    for name, value in samples.items():
        rule = rule.replace(name, value)
    if "/static/bootstrap/" in rule:
        rule = rule.replace("main.js", "css/bootstrap.min.css")
    assert "<" not in rule, f"test_roles does not know how to fill {rule}: add a sample"
    return [rule]


@pytest.fixture
def daemon(make_daemon, fake):
    fake.add_model(7301, "Role Model", "LORA")
    fake.add_version(7301, 73011, "v1", size=3000)
    daemon = make_daemon(api_token=ADMIN, viewer_token=VIEWER)
    daemon.token = ADMIN
    done = daemon.post("/api/download", {"modelVersionId": 73011}).json()["id"]
    daemon.completed = daemon.wait_state(done, "completed", 30)
    assert daemon.completed["preview"]
    return daemon


def call(daemon, method, path, token, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, daemon.url + path, headers=headers, timeout=20, allow_redirects=False, **kwargs)


def test_viewer_reads_everything_and_changes_nothing(daemon, fake):
    download_id = daemon.completed["id"]
    routes = route_table()
    writes = {(m, p) for m, rule in routes if m != "GET" for p in concrete(rule, download_id)}
    writes |= {(m, p) for m, path in openapi_operations() if m != "GET" for p in concrete(path, download_id)}
    reads = {p for m, rule in routes if m == "GET" for p in concrete(rule, download_id)}
    assert {("POST", "/api/download"), ("POST", "/api/batch"), ("POST", "/api/updates/check"),
            ("POST", f"/api/downloads/{download_id}/retry")} <= writes
    assert len(reads) >= 15

    # aria2's JSON-RPC carries its secret in-band (token:<secret>), checked per method below; its OPTIONS is
    # the CORS preflight, which changes nothing.
    writes = {(m, p) for m, p in writes if p != "/jsonrpc"}
    before = daemon.get("/api/downloads").json()
    rpc_writes = rpc_role_check(daemon, fake)
    assert {"aria2.addUri", "aria2.remove", "aria2.pause", "aria2.unpause", "aria2.changeOption",
            "aria2.removeDownloadResult"} <= rpc_writes
    for method, path in sorted(writes):
        body = {"url": fake.add_blob(f"viewer{len(path)}.bin", size=100)["url"]} if path == "/api/download" else {}
        r = call(daemon, method, path, VIEWER, json=body)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
        assert "read-only" in r.json()["error"]
    after = daemon.get("/api/downloads").json()
    assert after["total"] == before["total"] and after["items"] == before["items"]
    assert daemon.get("/api/updates").json()["total"] == 0

    for path in sorted(reads):
        if path == "/jsonrpc":
            ws = websocket.create_connection(daemon.url.replace("http", "ws") + path, timeout=10)
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "aria2.tellStopped",
                                "params": [f"token:{VIEWER}", 0, 10, ["gid"]]}))
            answer = json.loads(ws.recv())
            ws.close()
            assert answer["result"] == [{"gid": f"{download_id:016x}"}], answer
            continue
        if path == "/ws/downloads":
            feed = websocket.create_connection(daemon.url.replace("http", "ws") + path + f"?token={VIEWER}",
                                               timeout=10)
            snapshot = json.loads(feed.recv())
            feed.close()
            assert snapshot["event"] == "snapshot" and snapshot["data"]["role"] == "viewer"
            continue
        r = call(daemon, "GET", path, VIEWER)
        assert r.status_code == (302 if path in ("/", "/gui/") else 200), (path, r.status_code, r.text[:200])
    assert call(daemon, "GET", "/api/status", VIEWER).json()["role"] == "viewer"
    preview = requests.get(f"{daemon.url}/api/downloads/{download_id}/preview", params={"token": VIEWER}, timeout=10)
    assert preview.status_code == 200 and preview.headers["Content-Type"].startswith("image/")

    # the admin token still changes things
    assert call(daemon, "GET", "/api/status", ADMIN).json()["role"] == "admin"
    blob = fake.add_blob("admin.bin", size=500)
    added = call(daemon, "POST", "/api/download", ADMIN, json={"url": blob["url"]})
    assert added.status_code == 202
    daemon.wait_state(added.json()["id"], "completed", 20)
    assert call(daemon, "POST", "/api/updates/check", ADMIN).status_code == 200
    # passes the role check; refused only because a completed download cannot be retried
    assert call(daemon, "POST", f"/api/downloads/{download_id}/retry", ADMIN).status_code == 409


def rpc_role_check(daemon, fake):
    """Every aria2 method over POST /jsonrpc with the viewer token: reads answer, the rest are refused."""
    listed = requests.post(daemon.url + "/jsonrpc", timeout=10,
                           json={"jsonrpc": "2.0", "id": 0, "method": "system.listMethods"}).json()["result"]
    gid = f"{daemon.completed['id']:016x}"
    refused = set()
    for method in listed:
        if not method.startswith("aria2."):
            continue
        params = {"aria2.addUri": [[fake.add_blob("rpc-viewer.bin", size=10)["url"]]],
                  "aria2.changeOption": [gid, {}], "aria2.changeGlobalOption": [{}],
                  "aria2.tellWaiting": [0, 10], "aria2.tellStopped": [0, 10]}.get(method, [gid])
        if method in ("aria2.tellActive", "aria2.getGlobalStat", "aria2.getVersion", "aria2.getGlobalOption",
                      "aria2.getSessionInfo", "aria2.pauseAll", "aria2.forcePauseAll", "aria2.unpauseAll",
                      "aria2.purgeDownloadResult"):
            params = []
        answer = requests.post(daemon.url + "/jsonrpc", timeout=10, json={
            "jsonrpc": "2.0", "id": 1, "method": method, "params": [f"token:{VIEWER}", *params]}).json()
        if method.startswith(("aria2.tell", "aria2.get")):
            assert "result" in answer, (method, answer)
        else:
            assert "read-only" in answer["error"]["message"], (method, answer)
            refused.add(method)
    return refused


def test_wrong_or_missing_token_is_401(daemon):
    download_id = daemon.completed["id"]
    for token in (None, "wrong-token", VIEWER + "x", ADMIN[:-1]):
        for method, path in [("GET", "/api/status"), ("GET", f"/api/downloads/{download_id}/info"),
                             ("GET", f"/api/downloads/{download_id}/preview"), ("POST", "/api/updates/check"),
                             ("POST", f"/api/downloads/{download_id}/cancel")]:
            r = call(daemon, method, path, token)
            assert r.status_code == 401 and "error" in r.json(), (token, method, path, r.status_code)
        if token:
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                websocket.create_connection(daemon.url.replace("http", "ws") + f"/ws/downloads?token={token}",
                                            timeout=10)
            assert refused.value.status_code == 401
    preview = f"{daemon.url}/api/downloads/{download_id}/preview"
    assert requests.get(preview, params={"token": "wrong"}, timeout=10).status_code == 401
    # ?token= is for <img> and the WebSocket only: every other route wants the header
    for path in ("/api/status", f"/api/downloads/{download_id}/info"):
        assert requests.get(daemon.url + path, params={"token": ADMIN}, timeout=10).status_code == 401
    assert requests.post(daemon.url + "/api/updates/check", params={"token": ADMIN}, timeout=10).status_code == 401
    # no token needed for health and the GUI shell
    for path in ("/healthz", "/gui", "/static/main.js"):
        assert requests.get(daemon.url + path, timeout=10).status_code == 200
    assert ADMIN not in daemon.logs() and VIEWER not in daemon.logs()



def test_gui_hides_actions_from_a_viewer(daemon, fake, browser):
    blob = fake.add_blob("gui-role.bin", size=500)
    fake.faults.rate = 100
    stuck = daemon.post("/api/download", {"url": blob["url"]}).json()["id"]
    daemon.wait_state(stuck, "downloading", 20)
    daemon.post(f"/api/downloads/{stuck}/pause")
    daemon.wait_state(stuck, "paused", 20)
    fake.faults.rate = 0
    done = daemon.completed["id"]

    views = []
    try:
        for token in (VIEWER, ADMIN):
            view = Page(browser, daemon)
            views.append(view)
            view.context.add_init_script(f"localStorage.setItem('civitai-daemon-token', {json.dumps(token)})")
            page = view.open()
            paused = page.locator(f'#downloads tr[data-id="{stuck}"]')
            expect(paused.locator(".cell-state")).to_have_text("paused")
            expect(page.locator("#conn-state")).to_have_text("live")
            page.wait_for_function(f"document.querySelector('#downloads tr[data-id=\"{done}\"] img').naturalWidth > 0")
            actions = page.locator("button[data-action]:not([data-action=details]):visible, #check-updates:visible")
            if token == VIEWER:
                expect(page.locator("#readonly-banner")).to_be_visible()
                expect(page.locator("#add-form")).to_be_hidden()
                expect(page.locator("#check-updates")).to_be_hidden()
                expect(paused.locator("button[data-action=resume]")).to_be_hidden()
                expect(actions).to_have_count(0)
                assert page.locator("input:visible, textarea:visible, select:visible").evaluate_all(
                    "els => els.map(e => e.id)") == ["nsfw-toggle", "state-filter"]
                # reading still works: the detail view opens
                page.locator(f'#downloads tr[data-id="{done}"] button[data-action="details"]').click()
                expect(page.locator("#detail-modal")).to_be_visible()
                expect(page.locator("#detail-sha256")).to_have_text(daemon.completed["sha256"])
            else:
                expect(page.locator("#readonly-banner")).to_be_hidden()
                expect(page.locator("#add-form")).to_be_visible()
                expect(page.locator("#check-updates")).to_be_visible()
                expect(paused.locator("button[data-action=resume]")).to_be_visible()
                paused.locator("button[data-action=cancel]").click()
                expect(paused.locator(".cell-state")).to_have_text("cancelled")
            view.assert_clean()
            assert not view.console_errors, view.console_errors
    finally:
        for view in views:
            view.close()
    assert daemon.download(stuck)["state"] == "cancelled"
