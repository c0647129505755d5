"""The files under deploy/: they parse, the Kubernetes objects validate against their
schemas, the Dockerfile passes hadolint and runs the worker in exec form as a non-root
user, every grace period outlasts the worker's --grace, the probes and the scrape
annotations point at the ports and paths the worker serves, every flag and variable
the files pass exists, every image is pinned, and a real RabbitMQ node accepts the
rabbitmq.conf."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from support.nodes import RabbitNode

from rabbitworker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAY = KUBERNETES / "overlays" / "example"
KUBERNETES_VERSION = "1.30"  # the oldest minor version still supported upstream here


Object = dict[str, Any]


def load_all(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization_objects(directory: Path) -> list[Object]:
    """The resources a kustomization lists, recursively, without its patches."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Object] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += kustomization_objects(path) if path.is_dir() else load_all(path)
    return objects


@pytest.fixture(scope="module")
def built() -> list[Object]:
    """The example overlay as `kubectl kustomize` builds it (patches, images and namespace
    applied); without kubectl, the resources the kustomizations list, as written."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return kustomization_objects(OVERLAY)
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def by_kind(objects: list[Object], kind: str) -> list[Object]:
    return [obj for obj in objects if obj["kind"] == kind]


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def worker_container(deployment: Object) -> Object:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if "--app" in c.get("args", []))


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((word.upper(), rest.strip()))
    return stages


def last(stage: list[tuple[str, str]], instruction: str) -> str:
    return [rest for word, rest in stage if word == instruction][-1]


def compose() -> Object:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert load_all(path), path


def test_the_built_in_kinds_validate_strictly_against_the_kubernetes_schema(
    built: list[Object],
) -> None:
    builtin = [o for o in built if o["apiVersion"].split("/")[0] in {"v1", "apps", "policy"}]
    assert {o["kind"] for o in builtin} >= {"Deployment", "Service", "PodDisruptionBudget"}
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_would_catch_a_misspelt_field(built: list[Object]) -> None:
    deployment = json.loads(json.dumps(by_kind(built, "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_operator_objects_hold_only_the_fields_their_schemas_define(
    built: list[Object],
) -> None:
    schemas = json.loads((Path(__file__).parent / "deploy_schemas.json").read_text())
    kinds = {o["kind"] for o in built if o["kind"] in schemas}
    assert kinds == {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication"}
    for obj in built:
        if obj["kind"] in schemas:
            jsonschema.validate(obj, schemas[obj["kind"]])
    cluster = by_kind(built, "RabbitmqCluster")[0]
    assert cluster["spec"]["replicas"] == 3


def test_the_scaled_object_scales_the_worker_deployment_on_a_queue_of_the_example(
    built: list[Object],
) -> None:
    scaled = by_kind(built, "ScaledObject")[0]
    deployments = {d["metadata"]["name"] for d in by_kind(built, "Deployment")}
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] in example_app().queues
    auths = {a["metadata"]["name"] for a in by_kind(built, "TriggerAuthentication")}
    assert trigger["authenticationRef"]["name"] in auths


def example_app() -> Any:
    spec = importlib.util.spec_from_file_location(
        "deploy_web_node_tasks", ROOT / "examples" / "web_node" / "tasks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic looks its generic models up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.app


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_rabbitworker_in_exec_form_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    for name, stage in stages.items():
        user = last(stage, "USER")
        assert user.isdigit() and int(user) != 0, f"stage {name} runs as {user!r}"
        assert last(stage, "STOPSIGNAL") == "SIGTERM"
        for instruction in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(last(stage, instruction)), list)  # exec form
    worker = stages["worker"]
    assert json.loads(last(worker, "ENTRYPOINT")) == ["rabbitworker", "run"]


def worker_commands() -> Iterator[tuple[str, list[str], float | None]]:
    """(where, the `rabbitworker run` arguments, the time given to stop in seconds)."""
    cmd = json.loads(last(dockerfile_stages()["worker"], "CMD"))
    yield "Dockerfile CMD", cmd, None
    worker = compose()["services"]["worker"]
    yield "compose worker", worker["command"], seconds(worker["stop_grace_period"])
    for deployment in by_kind(kustomization_objects(OVERLAY), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        if any("--app" in c.get("args", []) for c in pod["containers"]):
            args = worker_container(deployment)["args"]
            yield deployment["metadata"]["name"], args, pod["terminationGracePeriodSeconds"]


def test_every_grace_period_outlasts_the_grace_the_worker_is_given() -> None:
    places = list(worker_commands())
    assert len(places) == 3
    for where, args, stop_after in places:
        grace = float(flag_value(args, "--grace"))
        if stop_after is not None:
            assert stop_after > grace, where


def help_flags() -> set[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-m", "rabbitworker", "run", "--help"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", done.stdout))


def test_every_flag_the_deploy_files_pass_exists_in_rabbitworker_run() -> None:
    known = help_flags()
    assert {"--app", "--grace", "--processes", "--health-port", "--metrics-port"} <= known
    for where, args, _ in worker_commands():
        used = {arg for arg in args if arg.startswith("--")}
        assert used - known == set(), where


def test_probes_and_scrape_annotations_point_at_the_ports_the_worker_serves(
    built: list[Object],
) -> None:
    for deployment in by_kind(built, "Deployment"):
        pod = deployment["spec"]["template"]
        if not any("--app" in c.get("args", []) for c in pod["spec"]["containers"]):
            continue
        container = worker_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        args = container["args"]
        assert ports["health"] == int(flag_value(args, "--health-port"))
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == int(flag_value(args, "--metrics-port"))
        assert annotations["prometheus.io/path"] == "/metrics"
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_probe_paths_are_served_by_the_package() -> None:
    from rabbitworker.ops.health import health_routes

    def answer() -> tuple[int, str, bytes]:
        return 200, "text/plain", b""

    assert set(health_routes(answer, answer)) == {"/healthz", "/readyz"}


def environments() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose()["services"].items():
        yield f"compose {name}", dict(service.get("environment") or {})
    for deployment in by_kind(kustomization_objects(OVERLAY), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            yield f"{deployment['metadata']['name']}/{container['name']}", env


def test_every_variable_the_deploy_files_set_is_a_setting_or_read_by_the_example() -> None:
    example = "".join(p.read_text() for p in (ROOT / "examples" / "web_node").glob("*.py"))
    for where, env in environments():
        for name in env:
            if name.startswith("RABBITMQ_"):
                continue  # read by the RabbitMQ image
            if name.startswith("RABBITWORKER_"):
                field = name.removeprefix("RABBITWORKER_").lower()
                assert field in Settings.model_fields, f"{where}: {name}"
            else:
                assert f'"{name}"' in example, f"{where}: {name}"


def test_compose_starts_the_services_once_rabbitmq_and_redis_are_healthy() -> None:
    services = compose()["services"]
    assert services["rabbitmq"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("worker", "web"):
        depends = services[name]["depends_on"]
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}
        assert set(depends) == {"rabbitmq", "redis"}


def referenced_images() -> set[str]:
    images = {rest.split()[0] for stage in dockerfile_stages().values()
              for word, rest in stage if word == "FROM" and ":" in rest.split()[0]}  # fmt: skip
    images |= {s["image"] for s in compose()["services"].values() if "build" not in s}
    for obj in kustomization_objects(KUBERNETES / "base"):
        if obj["kind"] == "RabbitmqCluster":
            images.add(obj["spec"]["image"])
    return images


def test_every_image_is_pinned_to_a_release_and_its_source_named_in_the_readme() -> None:
    readme = (DEPLOY / "README.md").read_text()
    images = referenced_images()
    assert len(images) == 3  # python, rabbitmq, redis
    for image in images:
        _, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to a release"
        assert f"`{image}`" in readme, f"{image} is not in deploy/README.md"


def rabbitmq_conf() -> dict[str, str]:
    """The settings of deploy/rabbitmq.conf; each block of them opens with a comment."""
    settings: dict[str, str] = {}
    above = ""
    for line in (DEPLOY / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert above.startswith("# "), f"no comment above {line!r}"
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
        else:
            above = line
    return settings


async def test_a_real_rabbitmq_node_accepts_the_rabbitmq_conf(
    make_rabbit_node: Callable[..., RabbitNode],
) -> None:
    settings = rabbitmq_conf()
    assert {"consumer_timeout", "vm_memory_high_watermark.relative"} <= set(settings)
    assert {"disk_free_limit.absolute", "raft.wal_max_size_bytes"} <= set(settings)
    # Its own user aside: the harness logs in as guest to see that the node is up.
    rest = {k: v for k, v in settings.items() if not k.startswith("default_")}
    assert set(settings) - set(rest) == {"default_user", "default_pass"}
    node = await asyncio.to_thread(make_rabbit_node, rest)
    answer = await asyncio.to_thread(
        node.ctl, "eval", "application:get_env(rabbit, consumer_timeout)."
    )
    assert answer.strip() == f"{{ok,{settings['consumer_timeout']}}}"
    cluster_config = by_kind(kustomization_objects(KUBERNETES / "base"), "RabbitmqCluster")[0]
    extra = cluster_config["spec"]["rabbitmq"]["additionalConfig"]
    for key, value in rest.items():  # the operator makes the user
        assert f"{key} = {value}" in extra
