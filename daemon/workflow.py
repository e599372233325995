"""The models a ComfyUI workflow needs (SPEC §13): pure, JSON in, references out.

ComfyUI lists them in two places: each loader node's `properties.models`
(current files and templates, also inside `definitions.subgraphs`) and a
top-level `models` array (older files). A muted (mode 2) or bypassed (mode 4)
node needs nothing, and neither does a subgraph that only such nodes use.
"""
import dataclasses

MUTED, BYPASSED = 2, 4


@dataclasses.dataclass(frozen=True)
class Ref:
    """One model a host file asks for: a manifest item dict to validate, or why there is none."""
    source: str
    raw: dict | None = None
    error: str | None = None


def is_workflow(data):
    """A ComfyUI workflow (UI format) rather than a manifest."""
    return isinstance(data, dict) and "items" not in data and isinstance(data.get("nodes"), list)


def _active(node):
    return isinstance(node, dict) and node.get("mode") not in (MUTED, BYPASSED)


def _subgraphs(data):
    definitions = data.get("definitions") if isinstance(data.get("definitions"), dict) else {}
    graphs = definitions.get("subgraphs") if isinstance(definitions.get("subgraphs"), list) else []
    return [(index, graph) for index, graph in enumerate(graphs) if isinstance(graph, dict)]


def _used_subgraphs(data):
    """Indexes of the subgraphs an active node instantiates (a node's `type` is the subgraph's id)."""
    graphs = _subgraphs(data)
    by_id = {graph.get("id"): index for index, graph in graphs if isinstance(graph.get("id"), str)}
    used, todo = set(), [n for n in data["nodes"] if _active(n)]
    while todo:
        node = todo.pop()
        kind = node.get("type")
        index = by_id.get(kind) if isinstance(kind, str) else None  # a list or object here is not an id
        if index is not None and index not in used:
            used.add(index)
            inner = dict(graphs)[index].get("nodes")
            if isinstance(inner, list):
                todo.extend(n for n in inner if _active(n))
    return used


def _ref(entry, source):
    """A manifest item dict for one {name, url, directory, hash?, hash_type?} entry."""
    if not isinstance(entry, dict):
        return Ref(source, error=f"{source}: expected an object with name, url and directory")
    name, url, directory = entry.get("name"), entry.get("url"), entry.get("directory")
    if not isinstance(url, str) or not url:
        return Ref(source, error=f"{source}: no url for {str(name)[:80]!r}; download it by hand or add its url")
    raw = {"url": url}
    if isinstance(name, str) and name:
        folder, _, filename = name.replace("\\", "/").rpartition("/")  # "SD1.5/x.safetensors" is a sub-folder
        raw["filename"] = filename
        directory = "/".join(p for p in (directory, folder) if isinstance(p, str) and p)
    if isinstance(directory, str) and directory:
        raw["subdir"] = directory
    kind = str(entry.get("hash_type") or "").lower().replace("-", "")
    if isinstance(entry.get("hash"), str) and kind in ("sha256", ""):
        raw["sha256"] = entry["hash"]
    return Ref(source, raw=raw)


def workflow_refs(data):
    """Every model the workflow's active nodes (and its top-level `models`) list, once each, in file order."""
    found = []
    for index, node in enumerate(data["nodes"]):
        found += _node_refs(node, f"nodes[{index}]")
    used = _used_subgraphs(data)
    for index, graph in _subgraphs(data):
        if index not in used:
            continue
        for position, node in enumerate(graph.get("nodes") or []):
            found += _node_refs(node, f"definitions.subgraphs[{index}].nodes[{position}]")
    models = data.get("models")
    for index, entry in enumerate(models if isinstance(models, list) else []):
        found.append(_ref(entry, f"models[{index}]"))
    unique, seen = [], set()
    for ref in found:
        key = (ref.raw or {}).get("subdir"), (ref.raw or {}).get("filename") or (ref.raw or {}).get("url")
        if ref.raw is not None and key in seen:
            continue
        seen.add(key)
        unique.append(ref)
    return unique


def _node_refs(node, where):
    if not _active(node):
        return []
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    models = properties.get("models")
    if not isinstance(models, list):
        return []
    return [_ref(entry, f"{where}.properties.models[{position}]") for position, entry in enumerate(models)]
