"""What every stage does at its edges: read its data, load its input models, save and register its output."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow

from components.config import DataSource
from components.data.loaders import load_records
from components.io import atomic_dir, dataset_digest, digest_path, write_jsonl
from tasks import tracking
from tasks.refs import DatasetRef, ModelRef
from tasks.stage import StageContext


def read_rows(ctx: StageContext, default_file: str, schema: str, source: DataSource | None = None,
              limit: int | None = None, name: str | None = None, split: str = "train") -> list[dict]:
    """The stage's rows (user `source` or the curated file), recorded as an MLflow dataset input.

    `split` is the split a dataset source is read from unless the source names one."""
    if source is None:
        path = ctx.data.file(default_file)
        rows = load_records(path, schema, limit=limit)
        digest = ctx.data.files[default_file]  # the DVC md5 of this file
    else:
        path, split = source.path, source.split or split
        rows = load_records(path, schema, split=split, config=source.config, revision=source.revision,
                            column_map=source.columns, limit=limit)
        what = {"content": digest_path(path) if Path(path).exists() else path,  # a hub dataset: named, not hashed
                "config": source.config, "split": split, "revision": source.revision, "columns": source.columns}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    tracking.log_dataset(path, digest, name=name or Path(default_file).stem, context="training", rows=rows)
    return rows


def read_dataset(ctx: StageContext, dataset: DatasetRef, limit: int | None = None) -> list[dict]:
    """The rows of a derived dataset record, recorded as an MLflow dataset input."""
    rows = load_records(dataset.uri, dataset.schema, limit=limit)
    tracking.log_dataset(dataset.uri, dataset.digest, name=f"{dataset.stage}-samples", context="derived", rows=rows)
    return rows


def load_policy(ctx: StageContext, ref: ModelRef, finetune: str = "full", lora=None):
    """(model, tokenizer) of a causal-LM input, ready for `finetune` mode (full | lora | qlora)."""
    from components.modeling.models import load_model, load_tokenizer

    m = ctx.model
    model = load_model(ref.uri, finetune=finetune, lora=lora, dtype=m.dtype, revision=m.revision,
                       trust_remote_code=m.trust_remote_code, seed=ctx.seed,
                       gradient_checkpointing=m.gradient_checkpointing)
    tokenizer = load_tokenizer(ref.uri, revision=m.revision, trust_remote_code=m.trust_remote_code)
    return model, tokenizer


def finish(ctx: StageContext, model, tokenizer, base: ModelRef | None = None, merge: bool = True,
           kind: str = "causal_lm") -> ModelRef | None:
    """Save the stage's model (atomically, to out_dir/model), log it to MLflow, register it with the stage's alias.

    In a data-parallel stage (tasks/launch.py) only rank 0 does this and returns the record; the other
    ranks hold the same weights and write nothing (None)."""
    from components.modeling.models import save_model
    from components.training.distributed import is_main

    if not is_main():
        return None
    model_dir = ctx.out_dir / "model"
    with atomic_dir(model_dir) as tmp:
        saved = save_model(model, tokenizer, tmp, base_path=base.uri if base else None, merge=merge,
                           dtype=ctx.model.dtype, revision=ctx.model.revision,
                           trust_remote_code=ctx.model.trust_remote_code)
    registered = tracking.log_model(saved, tokenizer, ctx.recipe_name, alias=ctx.alias, kind=kind,
                                    license=ctx.model.license)
    return ModelRef(uri=str(model_dir), digest=digest_path(model_dir), stage=ctx.name, kind=kind, run_id=ctx.run_id,
                    registered=registered)


def publish_rows(ctx: StageContext, rows: list[dict], name: str, schema: str = "sft") -> DatasetRef:
    """Write derived rows as a content-addressed file in the stage's output, logged to MLflow."""
    digest = dataset_digest(rows)
    path = ctx.out_dir / f"{name}-{digest[:16]}.jsonl"
    write_jsonl(path, rows)  # atomic: a temporary sibling renamed into place
    tracking.log_dataset(str(path), digest, name=name, context="derived", rows=rows)
    mlflow.log_artifact(str(path), "derived")
    return DatasetRef(uri=str(path), digest=digest, rows=len(rows), stage=ctx.name, schema=schema, run_id=ctx.run_id)
