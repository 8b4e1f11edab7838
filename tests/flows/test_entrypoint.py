"""A Prefect worker loads the flow from its entrypoint alone: every stage must still be known."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_does_not_depend_on_what_was_imported_first():
    code = ("from prefect.flows import load_flow_from_entrypoint\n"
            "flow = load_flow_from_entrypoint('flows/pipeline.py:r1_pipeline')\n"
            "from tasks.stages import registry\n"
            "from prefect.utilities.callables import parameter_schema\n"
            "schema = parameter_schema(flow.fn).model_dump()\n"
            "import json; print(json.dumps({'stages': sorted(registry()), 'schema': schema}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "", "PYTHONPATH": str(REPO), "HOME": "/tmp", "PREFECT_HOME": "/tmp/prefect-ep",
                              "HF_HUB_OFFLINE": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    modules = {p.stem for p in (REPO / "tasks" / "stages").glob("*.py")} - {"__init__"}
    assert set(result["stages"]) >= {"base", "cold_start", "rejection_sampling", "sft", "reasoning_rl", "evaluate"}
    assert len(result["stages"]) >= len(modules)
    # The deployment's parameter form is the typed recipe: every stage section is a field.
    recipe = result["schema"]["definitions"]["Recipe"]["properties"]
    assert {"run", "data", "model", "cold_start", "reasoning_rl"} <= set(recipe)
