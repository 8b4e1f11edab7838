"""Read infra/compose.yaml the way Compose does, without a container engine.

`interpolate` implements the parts of Compose's variable substitution the file uses:
`$$` (a literal `$`), `${VAR}`, `${VAR:-default}` / `${VAR-default}` and `${VAR:?message}` /
`${VAR?message}` (the colon forms also treat an empty value as unset).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PGPASS", re.IGNORECASE)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset (Compose refuses to start)."""


def load(path: Path = INFRA / "compose.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def read_env(path: Path = INFRA / ".env.example") -> dict[str, str]:
    """`KEY=value` lines of an env file; `# KEY=value` lines count as listed (value '')."""
    env = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            env[match[2]] = "" if match[1] else match[3].strip()
    return env


def variables(node) -> set[str]:
    """Names of every `${VAR…}` used anywhere in a parsed compose document."""
    return {m["name"] for text in strings(node) for m in VARIABLE.finditer(text) if m["name"]}


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return value or ""

    return VARIABLE.sub(substitute, text)


def resolve(node, env: dict[str, str]):
    """A parsed compose document (or part of it) with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    return node


def published_binds(doc: dict, env: dict[str, str]) -> dict[str, list[str]]:
    """Host address of each published port, per service, after interpolation.
    A port without an address ("5000:5000") binds every interface: reported as 0.0.0.0."""
    binds = {}
    for name, service in doc["services"].items():
        for port in service.get("ports", []):
            parts = interpolate(str(port), env).split(":")
            binds.setdefault(name, []).append(parts[0] if len(parts) == 3 else "0.0.0.0")
    return binds


def secret_literals(doc: dict) -> list[str]:
    """Environment entries whose name says secret but whose value is not taken from a variable
    (`${VAR}`, `${VAR:?…}`, or `${VAR:-}` with an empty default), and URLs with an inline password."""
    found = []
    for name, service in doc["services"].items():
        env = service.get("environment", {})
        items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
        found += [f"{name}.environment.{key}" for key, value in items
                  if SECRET_NAME.search(key) and not from_variable(value)]
        found += [f"{name}: {s}" for s in strings(service)
                  if re.search(r"://[^/\s:@]+:[^/\s@]+@", VARIABLE.sub("", s))]
    return found


def from_variable(value) -> bool:
    match = VARIABLE.fullmatch(str(value))
    return bool(match and match["name"]) and (match["op"] is None or match["op"].endswith("?") or match["arg"] == "")


def depends_on_problems(doc: dict) -> list[str]:
    """depends_on targets that do not exist, or that are waited for with the wrong condition:
    a target with a healthcheck must be `service_healthy`; one without must be a one-shot job
    (`restart: "no"`) waited for with `service_completed_successfully`."""
    services, problems = doc["services"], []
    for name, service in services.items():
        deps = service.get("depends_on", {})
        deps = {d: {} for d in deps} if isinstance(deps, list) else deps
        for target, spec in deps.items():
            condition = spec.get("condition", "service_started")
            if target not in services:
                problems.append(f"{name} -> {target}: no such service")
            elif "healthcheck" in services[target] and condition != "service_healthy":
                problems.append(f"{name} -> {target}: has a healthcheck, wait for service_healthy")
            elif "healthcheck" not in services[target] and (
                    condition != "service_completed_successfully" or services[target].get("restart") != "no"):
                problems.append(f"{name} -> {target}: no healthcheck; only one-shot jobs may be waited for")
    return problems


def unadopted_one_shots(doc: dict) -> list[str]:
    """One-shot jobs (`restart: "no"`) no long-running service waits for with
    `service_completed_successfully`: `compose up --wait` reports their clean exit as a failure."""
    waited_for = {target for service in doc["services"].values() if service.get("restart") != "no"
                  for target, spec in (service.get("depends_on") or {}).items()
                  if isinstance(spec, dict) and spec.get("condition") == "service_completed_successfully"}
    return sorted(n for n, s in doc["services"].items() if s.get("restart") == "no" and n not in waited_for)


def volume_problems(doc: dict) -> list[str]:
    """Named volumes used but not declared, or declared but not used."""
    declared = set(doc.get("volumes") or {})
    used = set()
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "$", "~")):
                used.add(source)
    return [f"volume {v} used, not declared" for v in sorted(used - declared)] + \
           [f"volume {v} declared, not used" for v in sorted(declared - used)]


def image_problems(doc: dict) -> list[str]:
    """Services with neither an image nor a build, or an image without a pinned tag."""
    problems = []
    for name, service in doc["services"].items():
        image = service.get("image")
        if image is None and "build" not in service:
            problems.append(f"{name}: no image and no build")
        elif image is not None and not pinned(image):
            problems.append(f"{name}: image {image} is not pinned")
    return problems


def pinned(image: str) -> bool:
    """`repo:tag` (or `repo@sha256:…`) with a tag other than `latest`."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")
