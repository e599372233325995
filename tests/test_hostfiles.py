"""ComfyUI workflows and generated PNGs dropped into inbox/ become downloads (SPEC §13)."""
import hashlib
import json
import struct
import zlib

import pytest

from conftest import sha
from daemon.a1111 import parameters_refs
from daemon.pngmeta import PngError, text_chunks
from daemon.workflow import workflow_refs


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(texts, compress=None):
    """A real 1×1 PNG with text chunks: {keyword: text}; `compress` = 'zTXt' or 'iTXt' for compressed ones."""
    body = [chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)),
            chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))]
    for key, text in texts.items():
        if compress == "zTXt":
            body.append(chunk(b"zTXt", key.encode() + b"\x00\x00" + zlib.compress(text.encode("latin-1"))))
        elif compress == "iTXt":
            body.append(chunk(b"iTXt", key.encode() + b"\x00\x01\x00\x00\x00" + zlib.compress(text.encode())))
        else:
            body.append(chunk(b"tEXt", key.encode() + b"\x00" + text.encode("latin-1")))
    return b"\x89PNG\r\n\x1a\n" + b"".join(body) + chunk(b"IEND", b"")


def autov3(sha256):
    return hashlib.sha256(b"autov3:" + sha256.upper().encode()).hexdigest()[:12]


def template_workflow(urls):
    """A template-style workflow: loader nodes with properties.models, one muted, one bypassed, a subgraph."""
    return {
        "id": "wf", "revision": 0, "last_node_id": 9, "last_link_id": 0, "links": [], "version": 0.4,
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "properties": {"models": [
                {"name": "base.safetensors", "url": urls["base"], "directory": "checkpoints"}]}},
            {"id": 2, "type": "LoraLoader", "mode": 2, "properties": {"models": [
                {"name": "muted.safetensors", "url": urls["muted"], "directory": "loras"}]}},
            {"id": 3, "type": "VAELoader", "mode": 4, "properties": {"models": [
                {"name": "bypassed.safetensors", "url": urls["bypassed"], "directory": "vae"}]}},
            {"id": 4, "type": "sub-1", "mode": 0, "properties": {}},
            {"id": 5, "type": "sub-unused", "mode": 2, "properties": {}},
            {"id": 6, "type": "UpscaleModelLoader", "mode": 0, "properties": {"models": [
                {"name": "present.pth", "url": urls["present"], "directory": "upscale_models"}]}},
            {"id": 7, "type": "CLIPLoader", "mode": 0, "properties": {"models": [
                {"name": "nourl.safetensors", "directory": "text_encoders"}]}},
        ],
        "definitions": {"subgraphs": [
            {"id": "sub-1", "name": "Refiner", "nodes": [
                {"id": 10, "type": "LoraLoaderModelOnly", "mode": 0, "properties": {"models": [
                    {"name": "detail.safetensors", "url": urls["detail"], "directory": "loras",
                     "hash": urls["detail_sha"], "hash_type": "sha256"}]}}]},
            {"id": "sub-unused", "name": "Off", "nodes": [
                {"id": 11, "type": "LoraLoader", "mode": 0, "properties": {"models": [
                    {"name": "inside-muted.safetensors", "url": urls["muted"], "directory": "loras"}]}}]},
        ]},
    }


# -- pure parts -------------------------------------------------------------------------------
def test_workflow_refs_follow_nodes_subgraphs_and_modes():
    urls = {k: f"https://example.com/{k}" for k in ("base", "muted", "bypassed", "present", "detail")}
    urls["detail_sha"] = "a" * 64
    refs = workflow_refs(template_workflow(urls))
    by_source = {r.source: r for r in refs}
    assert list(by_source) == ["nodes[0].properties.models[0]", "nodes[5].properties.models[0]",
                               "nodes[6].properties.models[0]", "definitions.subgraphs[0].nodes[0].properties.models[0]"]
    assert by_source["nodes[0].properties.models[0]"].raw == {
        "url": urls["base"], "filename": "base.safetensors", "subdir": "checkpoints"}
    assert "no url" in by_source["nodes[6].properties.models[0]"].error
    assert by_source["definitions.subgraphs[0].nodes[0].properties.models[0]"].raw["sha256"] == "a" * 64
    older = {"nodes": [{"id": 1, "type": "KSampler", "mode": 0}],
             "models": [{"name": "x.safetensors", "url": "https://e.com/x", "directory": "loras"},
                        {"name": "x.safetensors", "url": "https://e.com/x", "directory": "loras"}]}
    assert [r.source for r in workflow_refs(older)] == ["models[0]"]


def test_parameters_refs():
    text = ('a castle\nNegative prompt: blur\nSteps: 20, Sampler: Euler a, Seed: 1, Model hash: 6ce0161689, '
            'Model: v1-5, Lora hashes: "detail: 0123456789ab, style: zz", Version: v1.9')
    refs = parameters_refs(text)
    assert [(r.source, r.hash) for r in refs] == [("Model hash", "6ce0161689"), ("Lora hashes[detail]", "0123456789ab"),
                                                  ("Lora hashes[style]", None)]
    assert "not an AutoV2" in refs[2].error
    civitai = text + ', Civitai resources: [{"type":"checkpoint","modelVersionId":11},{"type":"lora","weight":1,' \
                     '"modelVersionId":12}]'
    assert [(r.source, r.version_id) for r in parameters_refs(civitai)] == [("Civitai resources[0]", 11),
                                                                            ("Civitai resources[1]", 12)]
    hashes = 'x\nSteps: 1, Hashes: {"model": "6ce0161689", "lora:detail": "0123456789ab"}, Model hash: 6ce0161689'
    assert [r.source for r in parameters_refs(hashes)] == ["Hashes[model]", "Hashes[lora:detail]"]


@pytest.mark.parametrize("compress", [None, "zTXt", "iTXt"])
def test_png_text_chunks(compress):
    assert text_chunks(png({"parameters": "hello", "workflow": "{}"}, compress)) == {"parameters": "hello",
                                                                                    "workflow": "{}"}


def test_malformed_pngs_say_what_is_wrong():
    good = png({"parameters": "x"})
    with pytest.raises(PngError, match="not a PNG"):
        text_chunks(b"GIF89a" + good[6:])
    with pytest.raises(PngError, match="incomplete PNG"):
        text_chunks(good[:-12])
    broken = bytearray(good)
    broken[40] ^= 0xFF
    with pytest.raises(PngError, match="CRC"):
        text_chunks(bytes(broken))
    bomb = chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * (20 << 20)))
    with pytest.raises(PngError, match="more than"):
        text_chunks(good[:33] + bomb + good[33:])


# -- the real daemon ----------------------------------------------------------------------------
@pytest.fixture
def blobs(fake):
    names = ("base", "muted", "bypassed", "present", "detail")
    made = {k: fake.add_blob(f"{k}.bin", size=3000 + i, safetensors=k != "present") for i, k in enumerate(names)}
    urls = {k: v["url"] for k, v in made.items()}
    urls["detail_sha"] = made["detail"]["sha256"]
    return made, urls


def test_a_template_workflow_downloads_what_its_active_nodes_need(make_daemon, fake, blobs):
    made, urls = blobs
    daemon = make_daemon()
    present = daemon.home / "downloads" / "upscale_models" / "present.pth"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"the user's own file")
    daemon.drop("wf.json", json.dumps(template_workflow(urls)).encode())
    folder, result = daemon.result("wf.json")
    assert folder == "failed"  # the node without a url fails alone; the rest are there
    items = {i["source"]: i for i in result["items"]}
    assert set(items) == {"nodes[0].properties.models[0]", "nodes[5].properties.models[0]",
                          "nodes[6].properties.models[0]", "definitions.subgraphs[0].nodes[0].properties.models[0]"}
    downloads = daemon.home / "downloads"
    assert items["nodes[0].properties.models[0]"]["status"] == "completed"
    assert sha(downloads / "checkpoints" / "base.safetensors") == made["base"]["sha256"]
    detail = items["definitions.subgraphs[0].nodes[0].properties.models[0]"]
    assert detail["status"] == "completed" and detail["verified"] is True
    assert sha(downloads / "loras" / "detail.safetensors") == made["detail"]["sha256"]
    assert items["nodes[5].properties.models[0]"] == {**items["nodes[5].properties.models[0]"],
                                                      "status": "completed", "path": str(present)}
    assert present.read_bytes() == b"the user's own file"
    assert items["nodes[6].properties.models[0]"]["status"] == "failed"
    assert "no url" in items["nodes[6].properties.models[0]"]["error"]
    assert not fake.requests_to(prefix="/files/present.bin")
    assert not fake.requests_to(prefix="/files/muted.bin") and not fake.requests_to(prefix="/files/bypassed.bin")
    assert not (downloads / "loras" / "muted.safetensors").exists()


def test_an_older_workflow_with_a_top_level_models_list(make_daemon, fake, blobs):
    made, urls = blobs
    daemon = make_daemon()
    workflow = {"last_node_id": 1, "nodes": [{"id": 1, "type": "KSampler", "mode": 0, "properties": {}}],
                "models": [{"name": "old-base.safetensors", "url": urls["base"], "directory": "checkpoints"}]}
    daemon.drop("older.json", json.dumps(workflow).encode())
    folder, result = daemon.result("older.json")
    assert folder == "done" and [i["source"] for i in result["items"]] == ["models[0]"]
    assert sha(daemon.home / "downloads" / "checkpoints" / "old-base.safetensors") == made["base"]["sha256"]
    # the same workflow again: everything is present now, nothing is fetched
    served = len(fake.requests_to(prefix="/files/base.bin"))
    daemon.drop("older-again.json", json.dumps(workflow).encode())
    folder, result = daemon.result("older-again.json")
    assert folder == "done" and result["items"][0]["status"] == "completed"
    assert len(fake.requests_to(prefix="/files/base.bin")) == served


def test_a_comfyui_png_with_a_workflow_chunk(make_daemon, fake, blobs):
    made, urls = blobs
    daemon = make_daemon()
    workflow = {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple", "mode": 0, "properties": {"models": [
        {"name": "from-image.safetensors", "url": urls["base"], "directory": "checkpoints"}]}}]}
    daemon.drop("ComfyUI_00001_.png", png({"prompt": "{}", "workflow": json.dumps(workflow)}, "iTXt"))
    folder, result = daemon.result("ComfyUI_00001_.png")
    assert folder == "done", result
    assert result["items"][0]["source"] == "nodes[0].properties.models[0]"
    assert sha(daemon.home / "downloads" / "checkpoints" / "from-image.safetensors") == made["base"]["sha256"]


def test_an_a1111_png_with_model_and_lora_hashes(make_daemon, fake):
    fake.add_model(9101, "Dream Base", "Checkpoint")
    base = fake.add_version(9101, 91011, "v1", size=4000)
    fake.add_model(9102, "Detail LoRA", "LORA")
    lora = fake.add_version(9102, 91021, "v1", size=2000)
    daemon = make_daemon()
    text = (f"a castle\nNegative prompt: blur\nSteps: 20, Sampler: Euler a, Model hash: {base['sha256'][:10]}, "
            f'Model: dream, Lora hashes: "detail: {autov3(lora["sha256"])}, gone: 00000000000a", Version: v1.9')
    daemon.drop("00001-123.png", png({"parameters": text}))
    folder, result = daemon.result("00001-123.png")
    assert folder == "failed"  # the unknown LoRA fails alone
    items = {i["source"]: i for i in result["items"]}
    assert items["Model hash"]["status"] == "completed" and items["Model hash"]["verified"] is True
    assert items["Lora hashes[detail]"]["status"] == "completed"
    assert "could not be resolved" in items["Lora hashes[gone]"]["error"]
    downloads = daemon.home / "downloads"
    assert sha(downloads / "Stable-diffusion" / base["filename"]) == base["sha256"]
    assert sha(downloads / "Lora" / lora["filename"]) == lora["sha256"]
    assert fake.requests_to(prefix=f"/api/v1/model-versions/by-hash/{base['sha256'][:10]}")


def test_an_a1111_png_with_civitai_resources_and_a_present_model(make_daemon, fake):
    fake.add_model(9201, "Res Base", "Checkpoint")
    base = fake.add_version(9201, 92011, "v1", size=4000)
    fake.add_model(9202, "Res LoRA", "LORA")
    lora = fake.add_version(9202, 92021, "v1", size=2000)
    daemon = make_daemon()
    have = daemon.home / "downloads" / "Stable-diffusion" / base["filename"]
    have.parent.mkdir(parents=True)
    have.write_bytes(b"already here")
    text = ('x\nSteps: 20, Model hash: ffffffffff, Civitai resources: [{"type":"checkpoint","modelVersionId":92011},'
            '{"type":"lora","weight":0.8,"modelVersionId":92021}], Version: f2.0')
    daemon.drop("forge.png", png({"parameters": text}, "zTXt"))
    folder, result = daemon.result("forge.png")
    assert folder == "done", result
    items = {i["source"]: i for i in result["items"]}
    assert items["Civitai resources[0]"]["path"] == str(have) and have.read_bytes() == b"already here"
    assert sha(daemon.home / "downloads" / "Lora" / lora["filename"]) == lora["sha256"]
    assert not fake.requests_to(prefix="/api/download/models/92011")


def test_a_malformed_png_goes_to_failed_with_the_reason(make_daemon):
    daemon = make_daemon()
    broken = bytearray(png({"parameters": "x"}))
    broken[40] ^= 0xFF
    daemon.drop("broken.png", bytes(broken))
    daemon.drop("plain.png", png({}))
    folder, result = daemon.result("broken.png")
    assert folder == "failed" and result["items"] == [] and "CRC" in result["errors"][0]
    folder, result = daemon.result("plain.png")
    assert folder == "failed" and "no generation metadata" in result["errors"][0]
    assert daemon.get("/healthz").json() == {"ok": True}


def test_a_workflow_model_already_downloaded_by_hash_is_linked_not_fetched(make_daemon, fake):
    blob = fake.add_blob("shared.safetensors", size=6000, safetensors=True)
    daemon = make_daemon()
    first = daemon.post("/api/download", {"url": blob["url"], "subdir": "elsewhere"}).json()["id"]
    daemon.wait_state(first, "completed")
    fetched = len(fake.requests_to(prefix="/files/shared.safetensors"))
    workflow = {"nodes": [{"id": 1, "type": "LoraLoader", "mode": 0, "properties": {"models": [
        {"name": "shared-lora.safetensors", "url": blob["url"] + "?mirror=1", "directory": "loras",
         "hash": blob["sha256"], "hash_type": "SHA256"}]}}]}
    daemon.drop("by-hash.json", json.dumps(workflow).encode())
    folder, result = daemon.result("by-hash.json")
    assert folder == "done", result
    assert sha(daemon.home / "downloads" / "loras" / "shared-lora.safetensors") == blob["sha256"]
    assert len(fake.requests_to(prefix="/files/shared.safetensors")) == fetched
