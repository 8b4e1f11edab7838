"""The `champion` alias of a recipe's registered model, moved only by a quality gate.

Every evaluated model version carries its held-out metrics as version tags, with the identity
of the held-out set they were measured on (`r1flow.heldout.set`: the eval data's md5 and the
evaluation settings). At the end of a pipeline run its final model is the candidate: it takes
the alias `champion` when no version holds it yet, or when its held-out accuracy is not below
the champion's on the same held-out set. Accuracies measured on different sets are not
compared: the champion stays and the decision says why. The decision is logged on the
pipeline's MLflow run as the tags `r1flow.champion.*`. Two pipelines finishing at once take
turns (a file lock), so the alias never moves on a stale read.
"""
from __future__ import annotations

import hashlib
import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

ALIAS = "champion"
HELDOUT = "r1flow.heldout"


def heldout_set(eval_file_md5: str, eval_section: dict) -> str:
    """Identity of a held-out measurement: which rows, scored how."""
    payload = json.dumps({"data": eval_file_md5, "evaluate": eval_section}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse(registered: str) -> tuple[str, str]:
    """`models:/NAME/VERSION` -> (NAME, VERSION)."""
    name, _, version = registered.removeprefix("models:/").rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{registered!r} is not a models:/NAME/VERSION URI")
    return name, version


def record_heldout(registered: str, metrics: dict, held_out: str) -> None:
    """Tag a model version with its held-out accuracy (± s.e., n) and the set it was measured on."""
    name, version = parse(registered)
    client = MlflowClient()
    tags = {f"{HELDOUT}.{key}": repr(float(metrics[key])) for key in ("accuracy", "accuracy_se", "n") if key in metrics}
    # also per set: a later evaluation on another set (`r1flow evaluate models:/NAME/V --set evaluate.limit=…`)
    # overwrites the latest-measurement tags above, never this one
    per_set = {f"{HELDOUT}.{held_out}.accuracy": tags[f"{HELDOUT}.accuracy"]} if f"{HELDOUT}.accuracy" in tags else {}
    for key, value in (tags | per_set | {f"{HELDOUT}.set": held_out}).items():
        _set_version_tag(client, name, version, key, value)


def _set_version_tag(client: MlflowClient, name: str, version: str, key: str, value: str, tries: int = 3) -> None:
    """Set a version tag; two pipelines tagging the same (cached) version at once can collide in
    the SQL store's insert-or-update (a UNIQUE constraint error for the loser), and setting it
    again then updates the row the other one inserted."""
    for attempt in range(tries):
        try:
            client.set_model_version_tag(name, version, key, value)
            return
        except MlflowException as e:
            if "UNIQUE constraint failed" not in str(e) or attempt == tries - 1:
                raise


def _accuracy_on(tags: dict, held_out: str | None) -> float | None:
    """A version's held-out accuracy on the set `held_out` (None if it was never scored there): its
    per-set tag, or, for a version tagged before those existed, its latest one if that was this set."""
    value = tags.get(f"{HELDOUT}.{held_out}.accuracy")
    if value is None and tags.get(f"{HELDOUT}.set") == held_out:
        value = tags.get(f"{HELDOUT}.accuracy")
    return float(value) if value is not None else None


def gate(registered: str) -> dict[str, str]:
    """Move `champion` to the candidate version if it passes the gate; returns the decision."""
    name, version = parse(registered)
    client = MlflowClient()
    candidate = client.get_model_version(name, version).tags
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        champion = None
    decision = {"candidate": f"{name}/{version}", "champion": f"{name}/{champion.version}" if champion else ""}
    if f"{HELDOUT}.accuracy" not in candidate:
        return decision | {"decision": "kept", "reason": "the candidate has no held-out accuracy"}
    accuracy = float(candidate[f"{HELDOUT}.accuracy"])
    best = _accuracy_on(champion.tags, candidate.get(f"{HELDOUT}.set")) if champion is not None else None
    if champion is None:
        promote, reason = True, f"no champion yet; held-out accuracy {accuracy:.4f}"
    elif str(champion.version) == version:
        promote, reason = False, "the candidate already is the champion"
    elif best is None:
        promote, reason = False, "not comparable: the champion was measured on a different held-out set"
    else:
        promote = accuracy >= best
        reason = f"held-out accuracy {accuracy:.4f} {'>=' if promote else '<'} champion's {best:.4f}"
    if promote:
        client.set_registered_model_alias(name, ALIAS, version)
    return decision | {"decision": "promoted" if promote else "kept", "reason": reason}
