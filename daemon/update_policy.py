"""What happens to a found update (SPEC §11): the policy, the guards, and applying updates.

The guards come before any policy: a permanent paid gate is `paid`; early or
paid access with an end date is `waiting`; a base-model change is `pending`
with reason "base model changed" — none of them is ever enqueued by a policy.
"""
import datetime
import logging

from .civitai import parse_time
from .errors import NotFound
from .manifest import Item
from .models import ModelPolicy, ModelUpdate, db, iso
from .states import APPLY_MODES, MODEL_POLICIES, UpdateState

log = logging.getLogger("daemon.updates")

BASE_MODEL_CHANGED = "base model changed"


def policy_for(model_id, config):
    """The model's override, else update_check.policy (auto_download: false means notify)."""
    with db.connection_context():
        override = ModelPolicy.get_or_none(ModelPolicy.model_id == model_id)
    if override is not None:
        return override.policy
    return config.get("policy", "alongside") if config.get("auto_download", True) else "notify"


def set_policy(model_id, policy):
    """Store a per-model override (notify, alongside, replace, ignore); None removes it."""
    if policy is not None and policy not in MODEL_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(MODEL_POLICIES)} (or null for the default), "
                         f"got {policy!r}")
    with db.connection_context():
        if policy is None:
            ModelPolicy.delete().where(ModelPolicy.model_id == model_id).execute()
        else:
            ModelPolicy.insert(model_id=model_id, policy=policy).on_conflict_replace().execute()
    return policy


def overrides(model_ids):
    with db.connection_context():
        return dict(ModelPolicy.select(ModelPolicy.model_id, ModelPolicy.policy)
                    .where(ModelPolicy.model_id.in_(list(model_ids))).tuples())


def gate(version):
    """(state, reason, not_before) for a gated version, or None when anyone may download it now."""
    now = datetime.datetime.now(datetime.timezone.utc)
    paid = version.get("paidAccess") if isinstance(version.get("paidAccess"), dict) else {}
    ends = [parse_time(version.get(k)) for k in ("earlyAccessEndsAt", "earlyAccessDeadline")]
    ends.append(parse_time(paid.get("endsAt")))
    future = [t for t in ends if t and t > now]
    if future:
        return UpdateState.WAITING, "early access", max(future)
    if paid.get("permanent"):
        return UpdateState.PAID, "paid access", None
    return None


def classify(version, previous_base_model, policy):
    """(state, reason or None, not_before) for a new update under `policy` (ignore/notify/alongside/replace)."""
    if policy == "ignore":
        return UpdateState.IGNORED, None, None
    gated = gate(version)
    if gated:
        return gated
    base = version.get("baseModel")
    if base and previous_base_model and base != previous_base_model:
        return UpdateState.PENDING, BASE_MODEL_CHANGED, None
    if policy == "notify":
        return UpdateState.PENDING, None, None
    return UpdateState.QUEUED, None, None


def update_dict(row, policy=None):
    """The API shape of an update entry (SPEC §8 + §11)."""
    return {"id": row.id, "modelId": row.model_id, "modelVersionId": row.version_id, "model_name": row.model_name,
            "version_name": row.version_name, "previous_version_id": row.previous_version_id,
            "reason": row.reason, "sha256": row.sha256, "detected_at": iso(row.detected_at), "state": row.state,
            "not_before": iso(row.not_before), "base_model": row.base_model,
            "previous_base_model": row.previous_base_model, "size": row.size, "previous_path": row.previous_path,
            "mode": row.mode, "replaced_to": row.replaced_to, "download_id": row.download_id, "policy": policy}


class Applier:
    """Enqueues chosen updates (POST /api/updates/apply, update-all, and the policy itself)."""

    def __init__(self, queue, config):
        self.queue = queue
        self.config = config

    def enqueue(self, row, mode):
        """Put one update's download in the queue; returns the download id."""
        item = Item(index=0, version_id=row.version_id, model_id=row.model_id, sha256=row.sha256,
                    filename=row.filename, subdir=row.subdir)
        download_id = self.queue.enqueue([item])[0]
        with db.connection_context():
            ModelUpdate.update(state=UpdateState.QUEUED.value, download=download_id, mode=mode).where(
                ModelUpdate.id == row.id).execute()
        log.info("update %s: model %s version %s queued as download %s (%s)", row.id, row.model_id,
                 row.version_id, download_id, mode)
        return download_id

    def choose(self, ids=None, everything=False):
        """The update rows an apply takes: `all` = every pending one but base-model changes."""
        with db.connection_context():
            if everything:
                return list(ModelUpdate.select().where((ModelUpdate.state == UpdateState.PENDING.value)
                                                       & ((ModelUpdate.reason != BASE_MODEL_CHANGED)
                                                          | ModelUpdate.reason.is_null()))
                            .order_by(ModelUpdate.id))
            rows = list(ModelUpdate.select().where(ModelUpdate.id.in_(list(ids))).order_by(ModelUpdate.id))
        unknown = sorted(set(ids) - {r.id for r in rows})
        if unknown:
            raise NotFound(f"no update with id {', '.join(map(str, unknown))}")
        return rows

    def apply(self, ids=None, everything=False, mode=None):
        """Enqueue the chosen updates; {"ids": download ids, "updates": update ids, "skipped": [...]}."""
        if mode is not None and mode not in APPLY_MODES:
            raise ValueError(f"mode must be one of {', '.join(APPLY_MODES)}, got {mode!r}")
        applicable = {UpdateState.PENDING.value, UpdateState.WAITING.value, UpdateState.FAILED.value,
                      UpdateState.IGNORED.value}
        rows = self.choose(ids or [], everything)
        policies = overrides({r.model_id for r in rows})
        done, updates, skipped = [], [], []
        for row in rows:
            if row.state not in applicable:
                why = ("permanent paid access: buy it on Civitai, then download it by hand"
                       if row.state == UpdateState.PAID.value else f"already {row.state}")
                skipped.append({"id": row.id, "reason": why})
                continue
            policy = policies.get(row.model_id) or self.config.get("policy", "alongside")
            chosen = mode or (policy if policy in APPLY_MODES else "alongside")
            done.append(self.enqueue(row, chosen))
            updates.append(row.id)
        return {"ids": done, "updates": updates, "skipped": skipped}
