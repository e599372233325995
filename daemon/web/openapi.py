"""The OpenAPI 3 description of the HTTP API (SPEC §8)."""


def document(version):
    return {"openapi": "3.0.3", "info": {"title": "civitai-daemon", "version": version}, "paths": {}}
