"""docker/ checked without a Docker engine: the compose file renders with .env.example and validates
against the compose-spec schema, every service's image or build exists, the Dockerfiles lint clean
(hadolint, from its PyPI wheel) and their ENTRYPOINT/CMD name real entry points and options."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile*"))
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message};
# $${VAR} is a literal for the container's shell.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            out[key.strip()] = value.strip()
    return out


def render(text: str, env: dict[str, str]) -> dict:
    """Interpolate as `docker compose --env-file .env.example config` would, then parse."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name, "") != "" or (op in ("-", "?") and name in env):
            return env[name]
        if op in (":?", "?"):
            raise AssertionError(f"compose requires {name}: {arg}")
        return arg if op in (":-", "-") else ""

    return yaml.safe_load(INTERPOLATION.sub(sub, text).replace("$$", "$"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return render(COMPOSE.read_text(), env_example())


def test_every_variable_is_in_env_example_and_env_is_ignored():
    used = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    defined = env_example()
    assert used <= set(defined), f"not in .env.example: {sorted(used - set(defined))}"
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"} <= used
    if shutil.which("git") and (REPO / ".git").exists():
        assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
        assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO).returncode == 1


def test_compose_validates_against_the_compose_spec(compose, tmp_path):
    pytest.importorskip("check_jsonschema")
    rendered = tmp_path / "compose.rendered.json"
    rendered.write_text(json.dumps(compose))
    for target in (COMPOSE, rendered):  # the file as written, and as rendered with .env.example
        proc = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_services_images_builds_and_wiring(compose):
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "app", "app-cuda"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert context == REPO, name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    init = " ".join(services["minio-init"]["command"])
    env = env_example()
    assert "mc mb --ignore-existing" in init and "local/${MLFLOW_BUCKET}" in init  # shell var, set below
    assert services["minio-init"]["environment"]["MLFLOW_BUCKET"] == env["MLFLOW_BUCKET"]
    args = services["mlflow"]["command"]
    store = args[args.index("--backend-store-uri") + 1]
    assert store == (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    )
    assert args[args.index("--artifacts-destination") + 1] == f"s3://{env['MLFLOW_BUCKET']}/mlartifacts"
    assert "--serve-artifacts" in args
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    port = args[args.index("--port") + 1]
    for app in ("app", "app-cuda"):
        assert services[app]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:*" in allowed or f"mlflow:{port}" in allowed  # the app's Host header passes
    assert services["app-cuda"]["build"]["dockerfile"].endswith("Dockerfile.cuda")
    # Only loopback ports are published.
    for name, svc in services.items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"


@pytest.fixture(scope="module")
def mlflow_server_help() -> str:
    """`mlflow server --help`, from the installed MLflow's CLI (in process: a subprocess costs seconds)."""
    import click
    from mlflow.cli import cli

    server = cli.commands["server"]
    return server.get_help(click.Context(server, info_name="server"))


def test_mlflow_server_options_exist(compose, mlflow_server_help):
    """Every option compose passes to `mlflow server` is one this MLflow knows."""
    helptext = mlflow_server_help
    options = [a for a in compose["services"]["mlflow"]["command"] if str(a).startswith("--")]
    options += [a for a in instructions(DOCKER / "mlflow.Dockerfile")["CMD"] if a.startswith("--")]
    for opt in options:
        assert re.search(rf"\s{re.escape(opt)}[\s/]", helptext), f"mlflow server has no option {opt}"


def stages(path: Path) -> list[dict]:
    """Each stage of a Dockerfile (multi-stage builds): its name, base image, the sources it COPYs from
    the build context and from other stages, its RUN commands, and its last ENTRYPOINT and CMD (exec
    form)."""
    out: list[dict] = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            out.append(
                {"name": name, "base": parts[0], "COPY": [], "COPY_FROM": [], "RUN": [], "ENTRYPOINT": [], "CMD": []}
            )
        elif word in ("ENTRYPOINT", "CMD"):
            out[-1][word] = json.loads(rest)  # exec form only: shell form would swallow signals
        elif word == "RUN":
            out[-1]["RUN"].append(rest)
        elif word == "COPY":
            options = [p for p in rest.split() if p.startswith("--")]
            parts = [p for p in rest.split() if not p.startswith("--")]
            source = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            if source is None:
                out[-1]["COPY"] += parts[:-1]
            else:
                out[-1]["COPY_FROM"].append((source, parts[:-1]))
    return out


def instructions(path: Path) -> dict[str, list[str]]:
    """The final stage's ENTRYPOINT and CMD, and every COPY source from the build context (all stages)."""
    all_stages = stages(path)
    return {
        "ENTRYPOINT": all_stages[-1]["ENTRYPOINT"],
        "CMD": all_stages[-1]["CMD"],
        "COPY": [src for stage in all_stages for src in stage["COPY"]],
    }


def console_scripts() -> dict[str, str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_commands_name_real_entry_points(path, mlflow_server_help):
    ins = instructions(path)
    if path.name == "mlflow.Dockerfile":
        assert ins["ENTRYPOINT"] == ["mlflow", "server"] and "--backend-store-uri" in mlflow_server_help
        assert shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
        return
    # The image runs the installed command, the one the wheel declares (not a checkout's src/main.py).
    assert ins["ENTRYPOINT"] == ["ckptmerge"]
    assert console_scripts()["ckptmerge"] == "ckptmerge.cli:main"
    for src in ins["COPY"]:
        assert (REPO / src).exists(), f"{path.name}: COPY {src} does not exist"
    # The default CMD is a list of Hydra overrides that compose and validate.
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from ckptmerge.cli import store_schema
    from ckptmerge.config import config_from_dict

    store_schema()  # the schema's defaults, as the app registers them before composing
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(ins["CMD"]))
    config_from_dict(OmegaConf.to_container(cfg, resolve=True))
    # What building the wheel and `mlflow run` need is copied, and .dockerignore lets it in.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    needed = ("src", "conf", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "MLproject", "python_env.yaml")
    for name in needed:
        assert name in ins["COPY"], f"{path.name} does not COPY {name}"
        assert f"!{name}" in ignore, f".dockerignore excludes {name}"


@pytest.mark.parametrize("path", [p for p in DOCKERFILES if p.name != "mlflow.Dockerfile"], ids=lambda p: p.name)
def test_images_install_the_wheel_built_in_a_stage_of_their_own(path):
    """A builder stage makes the wheel from the source; the final stage installs that wheel and holds no
    source: what runs in the image is what `pip install ckptmerge-*.whl` gives any user."""
    *builders, final = stages(path)
    wheel_stages = [s for s in builders if any(re.search(r"\bpip wheel\b.*--wheel-dir /dist\b", r) for r in s["RUN"])]
    assert len(wheel_stages) == 1, f"{path.name}: no stage builds the wheel into /dist"
    builder = wheel_stages[0]
    assert builder["name"] and {"src", "conf", "setup.py", "MANIFEST.in"} <= set(builder["COPY"])
    assert final["COPY_FROM"] == [(builder["name"], ["/dist"])]
    assert any(re.search(r"pip install [^&]*/dist/ckptmerge-\*\.whl", r) for r in final["RUN"]), final["RUN"]
    assert not {"src", "conf", "setup.py"} & set(final["COPY"]), f"{path.name}: the final image copies the source"
    assert final["base"] != builder["name"]


def test_dockerfiles_lint_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings it)")
    proc = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
