"""What an inbox file asks for: a manifest, a ComfyUI workflow or a generated PNG, as items (SPEC §5, §13).

The watcher calls `parse(name, bytes)` once per file. Workflows and images
yield one item per model with its `source`; a reference that cannot be
resolved becomes an item carrying its `error` (it fails alone, the others
still download) and a model whose file is already in its folder an item
carrying `present` (recorded completed, never fetched or overwritten). Hash
lookups ask Civitai (`GET /api/v1/model-versions/by-hash/{hash}`), so an image
costs one API call per model it names.
"""
import dataclasses
import json
import logging
from pathlib import Path

from .a1111 import parameters_refs
from .civitai import file_sha256, primary_file
from .errors import DaemonError, ManifestError
from .manifest import Item, decode_json, parse_items, sanitize_filename
from .pngmeta import PngError, text_chunks
from .workflow import is_workflow, workflow_refs

log = logging.getLogger("daemon.intake")

MAX_LOOKUPS = 100  # models named by one image's parameters (a real one names a handful)
NO_METADATA = ("image: no generation metadata (neither a ComfyUI 'workflow' nor an A1111/Forge 'parameters' "
               "text chunk); drop images saved by ComfyUI, A1111 or Forge with metadata kept")


class Intake:
    """Turns inbox files into items; `client` (CivitaiClient) resolves versions and hashes."""

    def __init__(self, settings, client=None):
        self.download_dir = Path(settings.download_dir)
        self.type_dirs = settings.type_dirs
        self.client = client

    def parse(self, name, data):
        """Items for one inbox file, or ManifestError listing every problem of a file rejected whole."""
        if name.lower().endswith(".png"):
            try:
                chunks = text_chunks(data)
            except PngError as exc:
                raise ManifestError([str(exc)]) from None
            if "workflow" in chunks:
                try:
                    workflow = json.loads(chunks["workflow"])
                except ValueError as exc:
                    raise ManifestError([f"image: the 'workflow' chunk is not JSON ({exc})"]) from None
                if not is_workflow(workflow):
                    raise ManifestError(["image: the 'workflow' chunk is not a ComfyUI workflow (no nodes)"])
                return self._finish(self._workflow_items(workflow), name)
            if "parameters" in chunks:
                return self._finish(self._parameters_items(chunks["parameters"]), name)
            raise ManifestError([NO_METADATA])
        data = decode_json(data)
        if is_workflow(data):
            return self._finish(self._workflow_items(data), name)
        return parse_items(data)

    @staticmethod
    def _finish(items, name):
        if not items:
            raise ManifestError([f"{'image' if name.lower().endswith('.png') else 'workflow'}: it lists no models "
                                 "(none in properties.models, models or the generation parameters)"])
        return [dataclasses.replace(item, index=index) for index, item in enumerate(items)]

    # -- workflows -----------------------------------------------------------------
    def _workflow_items(self, workflow):
        items = []
        for ref in workflow_refs(workflow):
            if ref.error:
                items.append(Item(index=0, source=ref.source, error=ref.error))
                continue
            try:
                item = parse_items([ref.raw])[0]
            except ManifestError as exc:
                reason = "; ".join(p.replace("items[0]", ref.source) for p in exc.problems)
                items.append(Item(index=0, source=ref.source, error=reason))
                continue
            items.append(self._present(dataclasses.replace(item, source=ref.source)))
        return items

    def _present(self, item):
        """The item marked `present` when a file of its name is already in its folder."""
        if not item.filename or item.error:
            return item
        folder = item.subdir
        if folder is None and item.version_id is None:
            folder = ""
        if folder is None:
            return item
        path = self.download_dir / folder / item.filename
        if path.is_file():
            log.info("%s: %s is already in place; not downloading it", item.source, path)
            return dataclasses.replace(item, present=str(path))
        return item

    # -- A1111 / Forge images --------------------------------------------------------------
    def _parameters_items(self, text):
        items, versions = [], set()
        refs = parameters_refs(text)
        if len(refs) > MAX_LOOKUPS:  # each costs a Civitai call on the one intake thread: 10,000 held it for hours
            raise ManifestError([f"image: its generation parameters name {len(refs)} models; at most {MAX_LOOKUPS} "
                                 "are looked up per image (write a manifest for more)"])
        for wanted in refs:
            if wanted.error:
                items.append(Item(index=0, source=wanted.source, error=wanted.error))
                continue
            item = self._resolve(wanted)
            if item.version_id and item.version_id in versions:
                continue
            versions.add(item.version_id)
            items.append(self._present(item))
        return items

    def _resolve(self, wanted):
        name = f" ({wanted.label})" if wanted.label else ""
        if self.client is None:
            return Item(index=0, source=wanted.source, version_id=wanted.version_id,
                        error=None if wanted.version_id else f"{wanted.source}: no Civitai client to look up "
                                                             f"{wanted.hash}")
        try:
            if wanted.version_id:
                version = self.client.version(wanted.version_id)
            else:
                version = self.client.by_hash(wanted.hash)
        except DaemonError as exc:
            if wanted.version_id:  # the worker resolves it again and reports what is wrong
                return Item(index=0, source=wanted.source, version_id=wanted.version_id)
            return Item(index=0, source=wanted.source,
                        error=f"{wanted.source}: hash {wanted.hash}{name} could not be resolved on Civitai: {exc}")
        malformed = Item(index=0, source=wanted.source, error=f"{wanted.source}: hash {wanted.hash or ''}{name}: "
                         "Civitai's answer is malformed (not a model version); try again later or add the model "
                         "by hand")
        if not isinstance(version, dict):
            return malformed
        try:  # a hostile or broken API answer must fail this item, not raise inside intake
            item = self._from_version(version, wanted)
        except (AttributeError, TypeError, ValueError):
            return malformed
        return item if item.url or item.version_id else malformed

    def _from_version(self, version, wanted):
        files = [f for f in version.get("files") or [] if isinstance(f, dict)]
        target = (wanted.hash or "").upper()
        file = next((f for f in files if target and target in {str(h).upper() for h in
                                                               (f.get("hashes") or {}).values()}), None)
        file = file or primary_file(version)
        kind = (version.get("model") or {}).get("type")
        subdir = self.type_dirs.get(kind, self.type_dirs.get("Other", "Other")) if kind else None
        url = file.get("downloadUrl") if file and isinstance(file.get("downloadUrl"), str) else None
        return Item(index=0, source=wanted.source, url=url, version_id=_id(version.get("id")),
                    model_id=_id(version.get("modelId")), sha256=file_sha256(file),
                    filename=sanitize_filename(file.get("name")) if file else None, subdir=subdir)


def _id(value):
    """A Civitai id as an int, or None when the answer holds something else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
