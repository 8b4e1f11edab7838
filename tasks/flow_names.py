"""Names of flow runs in the Prefect UI: the recipe and the data version, not random words."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


def pipeline_run_name() -> str:
    """`<recipe>-<data md5[:8]>-<UTC time>`, e.g. `default-ca682a92-20261125-0310`."""
    from prefect.runtime import flow_run

    from tasks.versioning import DataVersionError, read_dvc_file

    params = flow_run.parameters
    recipe = params.get("recipe")
    tree = recipe.model_dump() if hasattr(recipe, "run") else (recipe or {})
    name = tree.get("run", {}).get("name", "default")
    try:
        md5 = read_dvc_file(Path(params.get("root") or ".").resolve(), tree.get("data", {}).get("dir", "data"))[1][:8]
    except DataVersionError:
        md5 = "nodata"
    stage = params.get("stage")
    prefix = f"{name}-{stage}" if stage else name
    return f"{prefix}-{md5}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
