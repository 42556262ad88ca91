"""The Docker deployment files cannot run here (no Docker engine); check what can be checked:
YAML validity, service names, ports, env vars against the settings class, CLI flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.main
import yaml

from freshrag.cli import app
from freshrag.core.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra/docker-compose.yml"
FRESHRAG_SERVICES = ("ingest", "serve")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def default(value: str) -> str:
    """`${VAR:-default}` -> default (what runs when the user sets nothing)."""
    m = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
    return m.group(1) if m else value


def settings_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(ENV_PREFIX + name.upper())
        alias = field.validation_alias
        for choice in getattr(alias, "choices", []) or []:
            if isinstance(choice, str):
                names.add(choice)
    return names


def test_services_and_yaml(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"kafka", "qdrant", "llm", "ingest", "serve", "prometheus"}
    for name in FRESHRAG_SERVICES:
        assert compose["services"][name]["build"] == ".."
    assert (ROOT / "Dockerfile").exists()


def test_env_vars_are_settings_of_freshrag(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = settings_names()
    for name in FRESHRAG_SERVICES:
        env = env_of(compose["services"][name])
        unknown = sorted(k for k in env if k not in known)
        assert not unknown, f"{name}: env vars that Settings does not read: {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, "k1=t1" if ":?" in value else default(value))
        s = load_settings()  # the compose defaults are valid settings
        assert s.kafka_bootstrap == "kafka:9092" and s.qdrant_url == "http://qdrant:6333"


def test_addresses_point_at_services_and_their_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = env_of(services["ingest"])
    host, port = env["FRESHRAG_KAFKA_BOOTSTRAP"].split(":")
    assert host == "kafka"
    kafka_env = env_of(services["kafka"])
    assert f"PLAINTEXT://kafka:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    qdrant = urlparse(env["QDRANT_URL"])
    assert qdrant.hostname == "qdrant" and str(qdrant.port) in services["qdrant"]["expose"]
    llm = urlparse(default(env["FRESHRAG_OPENAI_BASE_URL"]))
    command = services["llm"]["command"]
    assert llm.hostname == "llm" and command[command.index("--port") + 1] == str(llm.port)


def test_ingest_has_two_workers_and_a_recovery_volume(compose: dict[str, Any]) -> None:
    ingest = compose["services"]["ingest"]
    cmd = ingest["command"]
    assert cmd[0] == "ingest" and cmd[cmd.index("-w") + 1] == "2"
    recovery = cmd[cmd.index("-r") + 1]
    assert any(v.split(":")[1] == recovery for v in ingest["volumes"])
    assert recovery.split("/")[-1] and "ingest-recovery" in compose["volumes"]
    click_app = typer.main.get_command(app)
    for name in FRESHRAG_SERVICES:
        command = compose["services"][name]["command"]
        sub = click_app.commands[command[0]]  # type: ignore[attr-defined]
        flags = {opt for p in sub.params for opt in p.opts}
        used = {c for c in command[1:] if c.startswith("-")}
        assert used <= flags, f"{name} uses flags the CLI lacks: {used - flags}"


def test_prometheus_scrapes_both_services_on_their_ports(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    services = compose["services"]
    assert f"ingest:{env_of(services['ingest'])['FRESHRAG_METRICS_PORT']}" in targets
    serve_port = env_of(services["serve"])["FRESHRAG_API_PORT"]
    assert f"serve:{serve_port}" in targets
    assert f"{serve_port}:{serve_port}" in services["serve"]["ports"]
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus/prometheus.yml:") for m in mounts)


def test_dockerfile_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["freshrag"]' in text
    assert "HF_HUB_OFFLINE=1" in text and "EXPOSE 8000 9464" in text
    for copied in ("pyproject.toml", "src"):
        assert re.search(rf"^COPY .*{copied}", text, re.M)


def published_ports(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports") or []]


def test_qdrant_and_kafka_are_not_published_and_qdrant_needs_a_key(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither has authentication on a published port: Qdrant requires an API key taken from
    the environment (no default), and neither publishes a port outside the compose network."""
    services = compose["services"]
    for name in ("qdrant", "kafka", "llm"):
        assert published_ports(services[name]) == [], f"{name} publishes a port"
        assert "network_mode" not in services[name]
    qdrant_key = env_of(services["qdrant"])["QDRANT__SERVICE__API_KEY"]
    assert re.fullmatch(r"\$\{QDRANT_API_KEY:\?.+\}", qdrant_key), "required, no default"
    for name in FRESHRAG_SERVICES:
        env = env_of(services[name])
        assert env["QDRANT_API_KEY"] == qdrant_key  # the same variable, so they always agree
        monkeypatch.setenv("QDRANT_API_KEY", "s3cret-qdrant")
        monkeypatch.setenv("QDRANT_URL", env["QDRANT_URL"])
        s = load_settings()
        assert s.qdrant_api_key is not None
        assert s.qdrant_api_key.get_secret_value() == "s3cret-qdrant"
        assert "s3cret-qdrant" not in str(s.safe_summary())
    # what is published binds to loopback unless it is the API itself (which has keys)
    for name, service in services.items():
        for port in published_ports(service):
            assert name == "serve" or port.startswith("127.0.0.1:"), f"{name}: {port}"
