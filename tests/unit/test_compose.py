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


def test_services_and_their_dependencies() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "worker", "scheduler"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    for name in ("worker", "scheduler"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
        inbox = [v for v in services[name]["volumes"] if isinstance(v, dict) and v.get("target") == "/inbox"]
        assert inbox and inbox[0]["type"] == "bind", f"{name}: the inbox must be a bind mount"
    # `--scale worker=N` needs a worker without a fixed container name or host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


@pytest.mark.parametrize("name", ["worker", "scheduler"])
def test_commands_are_real_entry_points(name: str) -> None:
    service = _compose()["services"][name]
    _check_entry(_argv(_expand(" ".join(shlex.quote(a) for a in _argv(service["command"])))), _entrypoint())
    health = service["healthcheck"]["test"]
    if health[0] == "CMD":
        _check_entry(health[1:], None)
    elif health[0] == "CMD-SHELL" and health[1].split()[0] in ("celery", "pneumoscan"):
        _check_entry(_argv(_expand(health[1])), None)


def test_environment_names_are_settings() -> None:
    fields = {f"PNEUMOSCAN_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        names = set(service.get("environment") or {})
        unknown = {n for n in names if n.startswith("PNEUMOSCAN_")} - fields
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
    env = _compose()["services"]["worker"]["environment"]
    assert {"PNEUMOSCAN_BROKER_URL", "PNEUMOSCAN_DATABASE_URL", "PNEUMOSCAN_PATIENT_SALT"} <= set(env)
    assert _expand(env["PNEUMOSCAN_DATABASE_URL"]).startswith("postgresql+psycopg://")
    # The defaults written into the file are valid values for the settings they set.
    Settings(**{k.removeprefix("PNEUMOSCAN_").lower(): _expand(str(v)) for k, v in env.items()
                if k.startswith("PNEUMOSCAN_")})


def test_gpu_override_reserves_devices_for_workers() -> None:
    worker = _compose(GPU_OVERRIDE)["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert worker["build"]["args"]["EXTRAS"] == "gpu"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("tensorflow[and-cuda]") for req in extras["gpu"])
