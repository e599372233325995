"""Webhook and Telegram notifications, with real local receivers and the real daemon (SPEC §7)."""
import re
import time

import pytest

from conftest import wait_for
from receivers import refused_url

BOT_TOKEN = "123456789:AAF-secretBotTokenValue_xyz"


def two_models(fake):
    fake.add_model(700, "Quick Model", "Checkpoint")
    fake.add_version(700, 7001, "v1", size=400_000)
    fake.add_model(701, "Quick LoRA", "LORA")
    fake.add_version(701, 7011, "v2", size=300_000)


@pytest.mark.parametrize("case", ["webhook-refused", "webhook-slow", "telegram-slow"])
def test_dead_or_slow_receiver_never_slows_downloads(fake, make_daemon, make_hook, case):
    two_models(fake)
    slow = make_hook(delay=15) if case.endswith("slow") else None
    if case == "webhook-refused":
        hook_url = refused_url()
        config = {"webhook_url": hook_url}
    elif case == "webhook-slow":
        config = {"webhook_url": slow.url + "/hook"}
    else:
        config = {"telegram": {"bot_token": BOT_TOKEN, "chat_id": 1}, "telegram_api_base": slow.url}
    d = make_daemon(**config)
    started = time.monotonic()
    d.drop("n.json", {"items": [{"modelVersionId": 7001}, {"modelVersionId": 7011}]})
    folder, result = d.result("n.json", timeout=20)
    assert folder == "done", result
    assert time.monotonic() - started < 8, "a receiver slowed the downloads"
    if slow is not None:
        assert wait_for(lambda: slow.posts, 5, message="the first POST reached the slow receiver")
        return
    # Connection refused: every event is tried 3 times, but the error is logged once.
    port = hook_url.split(":")[2].split("/")[0]
    attempts = lambda: len(re.findall(rf"Starting new HTTP connection \(\d+\): 127\.0\.0\.1:{port}", d.logs()))
    wait_for(lambda: attempts() >= 3 * 7, 20, message="all 7 events tried 3 times")
    errors = (d.home / "logs" / "error.log").read_text()
    assert len([line for line in errors.splitlines() if "webhook" in line]) == 1, errors
    assert "webhook failed (ConnectionError after 3 attempt(s))" in errors


def test_webhook_error_status_is_logged_once_and_recovers(fake, make_daemon, make_hook):
    two_models(fake)
    hook = make_hook(status=500)
    d = make_daemon(webhook_url=hook.url)
    d.drop("a.json", {"modelVersionId": 7001})
    d.result("a.json")
    wait_for(lambda: "webhook failed (answered 500" in d.logs(), 10, message="the webhook failure line")
    hook.status = 200
    d.drop("b.json", {"modelVersionId": 7011})
    d.result("b.json")
    wait_for(lambda: "webhook delivers again" in d.logs(), 10, message="the recovery line")
    assert wait_for(lambda: [e for e in hook.events("manifest.done") if e["data"]["manifest"] == "b.json"], 10)
    assert d.logs().count("webhook failed") == 1


def test_telegram_messages_filtered_readable_and_token_kept_secret(fake, make_daemon, make_hook):
    two_models(fake)
    fake.add_model(702, "Locked Model", "Checkpoint")
    fake.add_version(702, 7021, "v1", size=70_000, require_auth=True)
    bot = make_hook(reply={"ok": True, "result": {"message_id": 1}})
    d = make_daemon(telegram={"bot_token": BOT_TOKEN, "chat_id": -100123,
                              "events": ["download.completed", "download.failed"]},
                    telegram_api_base=bot.url)
    d.drop("t.json", {"items": [{"modelVersionId": 7001}, {"modelVersionId": 7021}]})
    folder, result = d.result("t.json")
    assert folder == "failed"
    messages = wait_for(lambda: len(bot.posts) >= 2 and bot.json_posts(), 10, message="two Telegram messages")
    assert all(p["path"] == f"/bot{BOT_TOKEN}/sendMessage" for p in bot.posts)
    assert all(m["chat_id"] == -100123 for m in messages)
    texts = {m["text"].splitlines()[0]: m["text"] for m in messages}
    done = texts["✅ Download completed"]
    assert "Quick Model — v1" in done and "quickModel_v1.safetensors" in done
    assert "Size: 400.0 KB" in done and re.search(r"Time: \d+(\.\d)? s", done)
    failed = texts["❌ Download failed"]
    assert "Locked Model — v1" in failed or "File:" in failed
    assert "needs a Civitai API token" in failed and "CIVITAI_API_TOKEN" in failed
    # Filtered events (queued, started, manifest.failed) never reach Telegram.
    d.drop("u.json", {"modelVersionId": 7011})
    d.result("u.json")
    wait_for(lambda: len(bot.posts) >= 3, 10, message="the third message")
    assert d.stop() == 0
    assert len(bot.posts) == 3
    secret = BOT_TOKEN.encode()
    scanned = [p for p in (d.home / "logs").iterdir()] + list(d.home.glob("completed.db*")) \
        + list((d.home / "done").glob("*")) + list((d.home / "failed").glob("*")) + [d.home / "stderr.txt"]
    assert len(scanned) > 4
    for path in scanned:
        assert secret not in path.read_bytes(), f"bot token found in {path}"
    assert b"/bot***" in (d.home / "logs" / "download.log").read_bytes()
