"""docker-compose.yml (no Docker engine here): every service runs a real entry point with real settings."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from pneumoscan.cli import main
from pneumoscan.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = ROOT / "docker-compose.gpu.yml"
CELERY_APP = "pneumoscan.worker.app"


def _compose(path: Path = COMPOSE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _check_pneumoscan(argv: list[str]) -> None:
    """The arguments name a real `pneumoscan` subcommand and parse with its options (nothing runs)."""
    command: click.Command = main
    while isinstance(command, click.Group) and argv and not argv[0].startswith("-"):
        assert argv[0] in command.commands, f"no such command: pneumoscan {argv[0]}"
        command, argv = command.commands[argv[0]], argv[1:]
    assert not isinstance(command, click.Group), argv
    ctx = click.Context(command, info_name=command.name)
    values, _, _ = command.make_parser(ctx).parse_args(list(argv))
    for param in command.params:
        if param.required:
            assert values.get(param.name) is not None, (argv, param.name)


def _check_celery(argv: list[str]) -> None:
    """A `celery -A pneumoscan.worker.app ...` invocation of a real celery subcommand."""
    from celery.bin.celery import celery

    assert argv[:2] == ["-A", CELERY_APP], argv
    assert argv[2] in celery.commands, argv  # type: ignore[attr-defined]


def _check_entry(argv: list[str], image_entrypoint: str | None) -> None:
    if image_entrypoint == "pneumoscan" and argv and argv[0] not in ("pneumoscan", "celery"):
        argv = ["pneumoscan", *argv]
    assert argv and argv[0] in ("pneumoscan", "celery"), argv
    if argv[0] == "pneumoscan":
        _check_pneumoscan(argv[1:])
    else:
        _check_celery(argv[1:])


def _expand(text: str) -> str:
    """Compose's ${NAME:-default} and ${NAME:?message} with the defaults; $$ is a literal $."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    text = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "value", text)
    return text.replace("$$", "$")


def _entrypoint() -> str | None:
    match = re.search(r'^ENTRYPOINT \["([^"]+)"', (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return match.group(1) if match else None


APP_SERVICES = ("migrate", "worker", "scheduler", "web")
WATCHED = "/srv/pneumoscan"


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The service's long-form mounts by target."""
    return {v["target"]: v for v in service.get("volumes", []) if isinstance(v, dict)}


def test_services_and_their_dependencies() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "migrate", "worker", "scheduler", "web"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        if name != "migrate":
            assert not service["healthcheck"].get("disable"), f"{name}'s health check is off"
    assert services["migrate"]["restart"] == "no"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "scheduler", "web"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    # `--scale worker=N` needs a worker without a fixed container name or host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_inbox_read_only_and_the_spool_written_by_the_scheduler_only() -> None:
    """Tasks carry paths: every container that reads files sees the inbox and the spool at the same paths."""
    services = _compose()["services"]
    inbox, spool = f"{WATCHED}/inbox", f"{WATCHED}/received"
    for name in ("worker", "scheduler", "web"):
        mounts = _mounts(services[name])
        assert mounts[inbox]["type"] == "bind" and mounts[inbox]["read_only"] is True, f"{name}: inbox"
        assert mounts[spool]["type"] == "volume" and mounts[spool]["source"] == "spool", f"{name}: spool"
        assert mounts[spool].get("read_only", False) is (name != "scheduler"), f"{name}: spool access"
    assert "spool" in _compose()["volumes"]
    # The scheduler watches the folder holding both, and its receiver writes FOLDER/received.
    assert _argv(services["scheduler"]["command"]) == ["scheduler", WATCHED]


def test_published_ports() -> None:
    services = _compose()["services"]
    assert services["web"]["ports"] == ["127.0.0.1:${PNEUMOSCAN_WEB_PORT:-8080}:8080"]
    assert "--host" in services["web"]["command"] and "0.0.0.0" in services["web"]["command"]
    assert services["scheduler"]["ports"] == ["${PNEUMOSCAN_DICOM_PORT:-11112}:11112"]
    assert services["scheduler"]["environment"]["PNEUMOSCAN_DICOM_PORT"] == "11112"
    for name in ("redis", "postgres", "migrate", "worker"):
        assert "ports" not in services[name], f"{name} publishes a port"


def test_images_default_to_the_official_ones() -> None:
    services = _compose()["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7-alpine}"
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:15}"
    for name in APP_SERVICES:
        args = services[name]["build"]["args"]
        assert args["PNEUMOSCAN_BASE_IMAGE"] == "${PNEUMOSCAN_BASE_IMAGE:-python:3.11-slim-bookworm}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG PNEUMOSCAN_BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${PNEUMOSCAN_BASE_IMAGE}\n" in dockerfile
    assert not re.search(r"^#\s*syntax\s*=", dockerfile, re.MULTILINE), "a syntax line fetches the frontend"
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image runs as root"
    # Every app service runs the one image that migrate builds.
    assert {services[name]["image"] for name in APP_SERVICES} == {"${PNEUMOSCAN_IMAGE:-pneumoscan:latest}"}


def test_required_secrets_are_in_the_example_env_file() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert {"POSTGRES_PASSWORD", "PNEUMOSCAN_PATIENT_SALT", "PNEUMOSCAN_SECRET_KEY"} <= required
    example = (ROOT / "deploy" / "pneumoscan.env.example").read_text()
    assert required <= set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_are_real_entry_points(name: str) -> None:
    service = _compose()["services"][name]
    _check_entry(_argv(_expand(" ".join(shlex.quote(a) for a in _argv(service["command"])))), _entrypoint())
    health = service["healthcheck"].get("test")
    if health is None:
        return
    if health[:2] == ["CMD", "python"]:
        assert health[2] == "-c"
        compile(health[3], f"{name} healthcheck", "exec")
    elif health[0] == "CMD":
        _check_entry(health[1:], None)
    elif health[0] == "CMD-SHELL" and health[1].split()[0] in ("celery", "pneumoscan"):
        _check_entry(_argv(_expand(health[1])), None)


def test_environment_names_are_settings() -> None:
    fields = {f"PNEUMOSCAN_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        names = set(service.get("environment") or {})
        unknown = {n for n in names if n.startswith("PNEUMOSCAN_")} - fields
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
    services = _compose()["services"]
    env = services["worker"]["environment"]
    assert {"PNEUMOSCAN_BROKER_URL", "PNEUMOSCAN_DATABASE_URL", "PNEUMOSCAN_PATIENT_SALT",
            "PNEUMOSCAN_DICOM_AE_TITLE", "PNEUMOSCAN_DICOM_ALLOWED_AES", "PNEUMOSCAN_RESULTS_DESTINATION"} <= set(env)
    assert "PNEUMOSCAN_SECRET_KEY" in services["web"]["environment"]
    assert _expand(env["PNEUMOSCAN_DATABASE_URL"]).startswith("postgresql+psycopg://")
    # The defaults written into the file are valid values for the settings they set.
    for name in APP_SERVICES:
        values = services[name]["environment"]
        Settings(**{k.removeprefix("PNEUMOSCAN_").lower(): _expand(str(v)) for k, v in values.items()
                    if k.startswith("PNEUMOSCAN_")})


def test_gpu_override_reserves_devices_for_workers() -> None:
    worker = _compose(GPU_OVERRIDE)["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert worker["build"]["args"]["EXTRAS"] == "gpu"
    assert "PNEUMOSCAN_BASE_IMAGE" in worker["build"]["args"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("tensorflow[and-cuda]") for req in extras["gpu"])


def test_gpu_requirements_replace_the_cpu_tensorflow() -> None:
    """deploy/requirements.py: the Dockerfile's dependency layer, from pyproject.toml."""
    import runpy

    requirements = runpy.run_path(str(ROOT / "deploy" / "requirements.py"))["requirements"]
    cpu = requirements(str(ROOT / "pyproject.toml"), [])
    gpu = requirements(str(ROOT / "pyproject.toml"), ["gpu"])
    assert any(r.startswith("tensorflow-cpu") for r in cpu)
    assert not any(r.startswith(("tensorflow-cpu", "tensorflow>")) for r in gpu)
    assert any(r.startswith("tensorflow[and-cuda]") for r in gpu)
    assert set(cpu) - set(gpu) <= {r for r in cpu if r.startswith("tensorflow")}
    with pytest.raises(KeyError):
        requirements(str(ROOT / "pyproject.toml"), ["no-such-extra"])
