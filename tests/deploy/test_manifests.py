"""deploy/ hangs together: every manifest parses, and the Dockerfile, the compose file, the Kubernetes
manifests and the gateway configs they carry name the same ports, paths, labels and variables.

No Docker engine and no cluster: files are parsed, and the configs go through `check-config`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config.durations import parse_duration_s as parse_duration
from gateway.config.load import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yaml"
COMPOSE_CONFIG = DEPLOY / "compose-config.yaml"
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")

# A test value for every variable the deploy configs read from the environment (never a real secret).
TEST_ENV = {
    "TOKENGATE_SECRET": "deploy-test-secret-0123456789-abcdefghijklmnop",
    "TOKENGATE_ADMIN_TOKEN": "deploy-test-admin-token-0123456789-abcdefgh",
    "REDIS_PASSWORD": "deploy-test-redis-password",
    "TOKENGATE_SMTP_URL": "smtp://mailer:deploy-test@smtp.example.test:587",
}


# --- loading ---------------------------------------------------------------------------------------

def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in documents(path)]


def k8s(kind: str) -> dict[str, Any]:
    found = [obj for obj in k8s_objects() if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return k8s("Deployment")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def named_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container()["ports"]}


def configmap_text() -> str:
    return k8s("ConfigMap")["data"]["config.yaml"]


def load(text_or_path: str | Path, tmp_path: Path, env: dict[str, str]) -> GatewayConfig:
    path = text_or_path if isinstance(text_or_path, Path) else tmp_path / "config.yaml"
    if not isinstance(text_or_path, Path):
        path.write_text(text_or_path)
    return load_config(path, environ=env)


@pytest.fixture
def k8s_config(tmp_path: Path) -> GatewayConfig:
    return load(configmap_text(), tmp_path, TEST_ENV)


@pytest.fixture
def compose_config(tmp_path: Path) -> GatewayConfig:
    return load(COMPOSE_CONFIG, tmp_path, TEST_ENV)


def variables(text: str) -> tuple[set[str], set[str]]:
    """The ${VAR}s a config reads: (required, with a default)."""
    required, defaulted = set(), set()
    for name, default in VAR.findall(text):
        (defaulted if default else required).add(name)
    return required, defaulted


def deployment_env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container().get("env", [])}


def compose() -> dict[str, Any]:
    return documents(COMPOSE)[0]


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m gateway check-config` as ops would run it: a fresh process, only these variables set."""
    clean = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", **env}
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)], cwd=ROOT,
                          env=clean, capture_output=True, text=True, timeout=30)


# --- the Dockerfile ----------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue   # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def only(stage: list[tuple[str, str]], op: str) -> str:
    found = [args for name, args in stage if name == op]
    assert len(found) == 1, f"expected one {op} in the final stage, found {found}"
    return found[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not the exec form: {args}"
    return value


def image_config_path() -> str:
    cmd = exec_form(only(final_stage(), "CMD"))
    assert cmd[:2] == ["serve", "--config"] and len(cmd) == 3
    return cmd[2]


def image_uid() -> int:
    user = only(final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), "a numeric USER, so runAsNonRoot can check it"
    return int(uid)


# --- every file -------------------------------------------------------------------------------------

def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "docker-compose.yaml", "compose-config.yaml", "k8s/kustomization.yaml", "k8s/deployment.yaml",
        "k8s/service.yaml", "k8s/configmap.yaml", "k8s/secret.yaml", "k8s/hpa.yaml", "k8s/pdb.yaml"}
    for path in files:
        docs = documents(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_every_k8s_object_has_api_version_kind_and_name_and_no_namespace() -> None:
    for path in manifest_files():
        for obj in documents(path):
            assert obj.get("apiVersion") and obj.get("kind"), path
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), path
            assert "namespace" not in obj["metadata"], f"{path}: the namespace is chosen at apply time"
    kinds = sorted(obj["kind"] for obj in k8s_objects())
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                            "PodDisruptionBudget", "Secret", "Service"])
    versions = {obj["kind"]: obj["apiVersion"] for obj in k8s_objects()}
    assert versions["HorizontalPodAutoscaler"] == "autoscaling/v2"
    assert versions["PodDisruptionBudget"] == "policy/v1"
    assert versions["Deployment"] == "apps/v1"


def test_kustomization_lists_exactly_the_manifest_files() -> None:
    kustomization = documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert sorted(resources) == [p.name for p in manifest_files()]
    images = {i["name"]: i for i in kustomization.get("images", [])}
    assert container()["image"].split(":")[0] in images   # the registry is set in one place


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_object_with_the_image_rewritten() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=30, check=True)
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) == len(k8s_objects())
    image = next(d for d in rendered if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    new = {i["name"]: i for i in documents(K8S / "kustomization.yaml")[0]["images"]}["tokengate"]
    assert image == f"{new['newName']}:{new['newTag']}"


# --- Kubernetes: ports, probes, mounts -------------------------------------------------------------

def test_container_ports_are_the_configs_listen_and_admin_ports(k8s_config: GatewayConfig) -> None:
    assert named_ports() == {"http": k8s_config.listen.port, "admin": k8s_config.admin.port}
    # The kubelet probes the pod IP: loopback-only ports would never pass a probe.
    assert k8s_config.listen.host == "0.0.0.0"
    assert k8s_config.admin.host == "0.0.0.0"


def probe_port(probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    return named_ports()[port] if isinstance(port, str) else port


def test_probes_ask_the_admin_port_healthz_for_liveness_and_readyz_for_readiness(k8s_config: GatewayConfig) -> None:
    c = container()
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for name, path in expected.items():
        probe = c[name]
        assert probe["httpGet"]["path"] == path, name
        assert probe_port(probe) == k8s_config.admin.port, name
        assert probe.get("timeoutSeconds", 1) < probe.get("periodSeconds", 10), name


def test_service_targets_the_named_proxy_port_and_not_the_admin_port(k8s_config: GatewayConfig) -> None:
    svc = k8s("Service")
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert named_ports()[port["targetPort"]] == k8s_config.listen.port
    assert all(named_ports().get(p["targetPort"], p["targetPort"]) != k8s_config.admin.port
               for p in svc["spec"]["ports"])
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_the_configmap_is_mounted_where_the_command_and_the_image_look_for_it() -> None:
    c, spec = container(), pod_spec()
    args = c.get("args") or exec_form(only(final_stage(), "CMD"))
    config_path = args[args.index("--config") + 1]
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_volumes = [v for v in volumes.values() if "configMap" in v]
    assert len(config_volumes) == 1
    volume = config_volumes[0]
    assert volume["configMap"]["name"] == k8s("ConfigMap")["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert item["key"] in k8s("ConfigMap")["data"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly") is True
    assert str(PurePosixPath(mount["mountPath"]) / item["path"]) == config_path
    assert config_path == image_config_path()
    assert f"TOKENGATE_CONFIG={config_path}" in only(final_stage(), "ENV").split()
    assert "subPath" not in mount   # a subPath mount never sees ConfigMap updates


def test_labels_and_selectors_agree() -> None:
    deployment = k8s("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= pod_labels.items()
    assert k8s("Service")["spec"]["selector"] == selector
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert k8s("NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == selector
    for constraint in pod_spec().get("topologySpreadConstraints", []):
        assert constraint["labelSelector"]["matchLabels"] == selector
    for obj in k8s_objects():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == selector["app.kubernetes.io/name"]


def test_the_hpa_scales_the_deployment_on_cpu_from_its_replica_count() -> None:
    hpa, deployment = k8s("HorizontalPodAutoscaler"), k8s("Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert deployment["spec"]["replicas"] >= 2
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container()["resources"]["requests"]   # utilisation is measured against it


def test_the_pdb_allows_a_drain_and_keeps_pods_serving() -> None:
    pdb = k8s("PodDisruptionBudget")["spec"]
    fewest = min(k8s("Deployment")["spec"]["replicas"], k8s("HorizontalPodAutoscaler")["spec"]["minReplicas"])
    assert ("maxUnavailable" in pdb) != ("minAvailable" in pdb)
    if "maxUnavailable" in pdb:
        assert 1 <= pdb["maxUnavailable"] < fewest
    else:
        assert 1 <= pdb["minAvailable"] < fewest
    rolling = k8s("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(k8s_config: GatewayConfig) -> None:
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    sleep_s = float(command[1])
    assert 1 <= sleep_s <= 15
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > k8s_config.listen.drain_timeout + sleep_s
    assert parse_duration("20s") == k8s_config.listen.drain_timeout   # the figure the comments cite


def test_the_pod_runs_unprivileged_with_limits() -> None:
    spec, c = pod_spec(), container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == image_uid() != 0
    assert spec.get("automountServiceAccountToken") is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind
    # A read-only root filesystem still needs a writable /tmp (tempfile, multiprocessing).
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] in tmp_volumes] == ["/tmp"]


def test_the_network_policy_names_the_container_ports() -> None:
    rules = k8s("NetworkPolicy")["spec"]["ingress"]
    by_port = {port["port"]: rule for rule in rules for port in rule["ports"]}
    assert set(by_port) == set(named_ports())
    assert "from" not in by_port["http"]     # the proxy: every peer
    assert by_port["admin"]["from"]          # the admin API: only selected pods


# --- Kubernetes: secrets and the config --------------------------------------------------------------

def test_the_config_reads_exactly_the_variables_the_pod_gets_from_the_secret() -> None:
    secret = k8s("Secret")
    required, _ = variables(configmap_text())
    env = deployment_env()
    assert set(env) == required == set(secret["stringData"])
    for name, entry in env.items():
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": name}
    assert set(TEST_ENV) >= required, "give every variable a test value in TEST_ENV"
    for value in secret["stringData"].values():
        assert "REPLACE-ME" in value   # placeholders only, never a real key


def test_the_configmap_config_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(configmap_text())
    env = {name: TEST_ENV[name] for name in deployment_env()}
    done = check_config(path, env)
    assert done.returncode == 0, done.stderr
    assert "OK: 5 routes, 2 upstreams" in done.stdout
    assert "store redis+sentinel://:***@redis:26379/mymaster" in done.stdout
    assert env["TOKENGATE_SECRET"] not in done.stdout + done.stderr


def test_the_placeholder_secret_is_refused_so_it_can_never_serve(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(configmap_text())
    done = check_config(path, dict(k8s("Secret")["stringData"]))
    assert done.returncode == 2
    assert "tokens.keys[0].secret" in done.stderr


def test_the_store_is_the_shared_redis(k8s_config: GatewayConfig) -> None:
    url = urlsplit(k8s_config.store.url)
    assert url.scheme == "redis+sentinel" and url.path == "/mymaster"
    assert url.password == TEST_ENV["REDIS_PASSWORD"]
    assert k8s_config.store.on_error == "deny"
    assert k8s_config.listen.workers == 1   # scale with pods; each worker would keep its own mirror


# --- the Dockerfile -----------------------------------------------------------------------------------

def test_the_dockerfile_builds_a_slim_non_root_image_that_serves_the_config(k8s_config: GatewayConfig,
                                                                          compose_config: GatewayConfig) -> None:
    instructions = dockerfile()
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    for base in froms:
        image = base.split()[0]
        image = args.get(image.strip("${}"), image)
        assert image.startswith("python:3.11-slim"), base
    stage = final_stage()
    assert image_uid() >= 1000
    assert exec_form(only(stage, "ENTRYPOINT")) == ["tokengate"]
    assert image_config_path() == "/etc/tokengate/config.yaml"
    assert only(stage, "STOPSIGNAL") == "SIGTERM"
    for cfg in (k8s_config, compose_config):
        assert {int(p) for p in only(stage, "EXPOSE").split()} == {cfg.listen.port, cfg.admin.port}
    healthcheck = only(stage, "HEALTHCHECK")
    assert f"http://127.0.0.1:{k8s_config.admin.port}/healthz" in healthcheck
    assert exec_form(healthcheck.split(" CMD ", 1)[1])[0] == "python"   # no curl in slim
    installs = [a for op, a in instructions if op == "RUN" and "pip install" in a]
    assert installs and all(re.search(r"pip install \.(\s|$)", a) for a in installs), "the project, no extras"
    assert not any(op == "RUN" for op, _ in stage[stage.index(("USER", only(stage, "USER"))):])


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for op, a in dockerfile():
        if op == "COPY" and not a.startswith("--from"):
            copied.update(p.rstrip("/") for p in a.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "gateway"}
    assert "**/__pycache__" in patterns


# --- docker compose ---------------------------------------------------------------------------------

def test_compose_services_reference_each_other(compose_config: GatewayConfig) -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "echo", "redis"}
    gateway, echo, redis = services["gateway"], services["echo"], services["redis"]
    assert gateway["depends_on"] == {"redis": {"condition": "service_healthy"},
                                     "echo": {"condition": "service_healthy"}}
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name

    store = urlsplit(compose_config.store.url)
    assert (store.scheme, store.hostname, store.port) == ("redis", "redis", 6379)
    assert "--port" not in redis["command"]                       # so 6379, redis' default
    assert str(store.port) in redis["expose"]

    (upstream,) = compose_config.upstreams.values()
    url = urlsplit(str(upstream.url))
    echo_args = echo["command"]
    echo_port = int(echo_args[echo_args.index("--port") + 1])
    assert echo_args[echo_args.index("--host") + 1] == "0.0.0.0"
    assert (url.hostname, url.port) == ("echo", echo_port)
    assert echo["entrypoint"] == ["python", "-m", "gateway.dev.echo"]
    assert f"http://127.0.0.1:{echo_port}/" in " ".join(echo["healthcheck"]["test"])
    assert echo["image"] == gateway["image"] and echo["build"] == gateway["build"]


def test_compose_gateway_mounts_its_config_and_publishes_only_the_proxy(compose_config: GatewayConfig) -> None:
    gateway = service("gateway")
    (volume,) = gateway["volumes"]
    source, target, mode = volume.split(":")
    assert (DEPLOY / source).resolve() == COMPOSE_CONFIG and mode == "ro"
    assert target == image_config_path()
    assert gateway["command"] == exec_form(only(final_stage(), "CMD"))
    published = [shlex.split(p)[0].split(":") for p in gateway["ports"]]
    assert published == [[str(compose_config.listen.port), str(compose_config.listen.port)]]
    assert compose_config.admin.host == "0.0.0.0" and gateway["expose"] == [str(compose_config.admin.port)]
    assert f"http://127.0.0.1:{compose_config.admin.port}/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert parse_duration(gateway["stop_grace_period"]) > compose_config.listen.drain_timeout
    build = gateway["build"]
    assert ((DEPLOY / build["context"]).resolve() / build["dockerfile"]) == DEPLOY / "Dockerfile"
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]


def test_compose_redis_persists_to_a_named_volume() -> None:
    redis = service("redis")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    (volume,) = redis["volumes"]
    name, path = volume.split(":")
    assert path == "/data" and name in compose()["volumes"]


def test_compose_env_gives_the_config_every_variable_it_needs() -> None:
    required, _ = variables(COMPOSE_CONFIG.read_text())
    assert set(service("gateway")["environment"]) == required
    assert service("gateway")["environment"]["TOKENGATE_SECRET"].startswith("${TOKENGATE_SECRET:?")


def test_the_compose_config_passes_check_config() -> None:
    env = {name: TEST_ENV[name] for name in service("gateway")["environment"]}
    done = check_config(COMPOSE_CONFIG, env)
    assert done.returncode == 0, done.stderr
    assert "OK: 5 routes, 1 upstreams" in done.stdout and "store redis://redis:6379/0" in done.stdout


# --- deploy/README.md's compose quickstart ------------------------------------------------------------

README = DEPLOY / "README.md"
# Compose's interpolation: ${VAR} and ${VAR:?err} / ${VAR?err} need VAR; ${VAR:-x}, ${VAR-x}, ${VAR:+x} do not.
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}")
EXPORTED = re.compile(r"(?:^export|\s)\s*([A-Za-z_][A-Za-z0-9_]*)=")


def compose_quickstart() -> list[str]:
    """The commands of deploy/README.md's docker compose quickstart (the section's first sh block)."""
    section = README.read_text().split("\n## docker compose\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block under ## docker compose"
    return [line.split("  #", 1)[0].strip() for line in block[1].splitlines() if line.strip()]


def compose_strings(node: Any) -> list[str]:
    """Every string of the parsed compose file (its comments are not part of it)."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in compose_strings(key) + compose_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in compose_strings(item)]
    return [node] if isinstance(node, str) else []


def test_the_compose_quickstart_exports_every_variable_compose_requires() -> None:
    required = {name for text in compose_strings(compose()) for name, op in COMPOSE_VAR.findall(text)
                if op in ("", ":?", "?")}
    commands = compose_quickstart()
    up = next(i for i, line in enumerate(commands) if " up" in line)
    exported = {name for line in commands[:up] if line.startswith("export ") for name in EXPORTED.findall(line)}
    assert required, "the compose file reads no variable: update this test"
    assert required <= exported, f"the quickstart does not export {sorted(required - exported)}"


def test_the_compose_quickstart_names_the_compose_file_and_its_services() -> None:
    services = set(compose()["services"])
    compose_commands = [shlex.split(line.partition("$(")[2].rstrip(")") or line) for line in compose_quickstart()
                        if "docker compose" in line]
    assert len(compose_commands) >= 3
    for args in compose_commands:
        assert (ROOT / args[args.index("-f") + 1]).resolve() == COMPOSE, args
        if "exec" in args:
            rest = [a for a in args[args.index("exec") + 1:] if not a.startswith("-")]
            assert rest[0] in services and rest[1] == "tokengate", args
