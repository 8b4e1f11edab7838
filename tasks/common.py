"""What every stage does at its edges: read its data, record it, save and register its model."""
from __future__ import annotations

import hashlib
from pathlib import Path

from components.data.loaders import load_records
from components.io import atomic_dir, digest_path
from components.modeling.models import load_model, load_tokenizer, save_model
from tasks import tracking
from tasks.refs import ModelRef
from tasks.stage import StageContext


def read_rows(ctx: StageContext, default_file: str, schema: str, source: str | None, limit: int | None) -> list[dict]:
    """The stage's rows (user `source` or the curated file), recorded as an MLflow dataset input."""
    path = source or ctx.data.file(default_file)
    rows = load_records(path, schema, limit=limit)
    if source is None:
        digest = ctx.data.files[default_file]  # the DVC md5 of this file
    elif Path(source).exists():
        digest = digest_path(source)
    else:
        digest = hashlib.sha256(source.encode()).hexdigest()  # a hub dataset: named, not hashed
    tracking.log_dataset(path, digest, name=Path(default_file).stem, context="training", rows=rows)
    return rows


def load_upstream(ctx: StageContext, finetune: str = "full", lora=None):
    """(model, tokenizer) of the upstream stage's output, ready for `finetune` mode."""
    m = ctx.recipe.model
    model = load_model(ctx.upstream.uri, finetune=finetune, lora=lora, dtype=m.dtype,
                       revision=m.revision, trust_remote_code=m.trust_remote_code)
    tok = load_tokenizer(ctx.upstream.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    return model, tok


def finish(ctx: StageContext, model, tokenizer, merge: bool = True) -> ModelRef:
    """Save the stage's model (atomically), log it to MLflow, register it with the stage alias."""
    base_path = ctx.upstream.uri if ctx.upstream else None
    with atomic_dir(ctx.out_dir) as tmp:
        saved = save_model(model, tokenizer, tmp / "model", base_path=base_path, merge=merge,
                           dtype=ctx.recipe.model.dtype)
    model_dir = ctx.out_dir / "model"
    registered = tracking.log_model(saved, tokenizer, f"{ctx.recipe.run.name}", alias=ctx.name)
    return ModelRef(uri=str(model_dir), digest=digest_path(model_dir), stage=ctx.name, run_id=ctx.run_id,
                    registered=registered)
