"""The Docker deployment files cannot run here (no Docker engine, no compose plugin); check what
can be checked: YAML validity, the scale-out topology (one bytewax cluster of 2 ingest processes
sharing a recovery volume, 2 API replicas, Qdrant with an API key, Kafka with 4 partitions),
ports, env vars against the settings class, and the commands as the CLI itself parses them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.core
import typer.main
import yaml

from freshrag.cli import app
from freshrag.core.settings import ENV_PREFIX, Settings, load_settings
from freshrag.ingest.runner import IngestOptions, check_options

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra/docker-compose.yml"
INGEST = ("ingest-0", "ingest-1")
SERVE = ("serve-1", "serve-2")
FRESHRAG_SERVICES = INGEST + SERVE


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


def cli_params(command: list[str]) -> dict[str, Any]:
    """The options a service's command gives `freshrag`, as the CLI parses them (so an option
    given twice, or one the CLI lacks, shows up here as it would at run time)."""
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    sub = click_app.commands[command[0]]
    with sub.make_context(command[0], list(command[1:])) as ctx:
        return dict(ctx.params)


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a service starts with when the user sets only the required variables."""
    for key, value in env_of(service).items():
        monkeypatch.setenv(key, "k1=t1" if ":?" in value else default(value))
    return load_settings()


def published_ports(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports") or []]


def test_services_and_yaml(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "qdrant",
        "llm",
        "prometheus",
        *INGEST,
        *SERVE,
    }
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
        s = settings_of(compose["services"][name], monkeypatch)  # the defaults are valid
        assert s.kafka_bootstrap == "kafka:9092" and s.qdrant_url == "http://qdrant:6333"


def test_settings_named_in_comments_exist() -> None:
    """The file's comments tell users which variables to set (a Qdrant cluster's shards, say):
    every FRESHRAG_* name it mentions must be one freshrag reads."""
    mentioned = set(re.findall(r"\bFRESHRAG_[A-Z_]*[A-Z]", COMPOSE.read_text()))
    assert {"FRESHRAG_QDRANT_SHARDS", "FRESHRAG_QDRANT_REPLICATION_FACTOR"} <= mentioned
    assert mentioned <= settings_names(), sorted(mentioned - settings_names())


def test_every_freshrag_service_shares_topic_store_and_key(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest processes and API replicas must agree on the topic (consistency tokens name its
    partitions), the collection and the store, and all use the key Qdrant requires."""
    services = compose["services"]
    qdrant_key = env_of(services["qdrant"])["QDRANT__SERVICE__API_KEY"]
    seen: set[tuple[object, ...]] = set()
    for name in FRESHRAG_SERVICES:
        env = env_of(services[name])
        assert env["QDRANT_API_KEY"] == qdrant_key, name
        s = settings_of(services[name], monkeypatch)
        seen.add((s.topic, s.dlq_topic, s.collection, s.qdrant_url, s.kafka_bootstrap))
    assert seen == {("documents", "documents.dlq", "freshrag", "http://qdrant:6333", "kafka:9092")}


def test_addresses_point_at_services_and_their_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in FRESHRAG_SERVICES:
        env = env_of(services[name])
        host, port = env["FRESHRAG_KAFKA_BOOTSTRAP"].split(":")
        assert host == "kafka"
        kafka_env = env_of(services["kafka"])
        assert f"PLAINTEXT://kafka:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
        qdrant = urlparse(env["QDRANT_URL"])
        assert qdrant.hostname == "qdrant" and str(qdrant.port) in services["qdrant"]["expose"]
        llm = urlparse(default(env["FRESHRAG_OPENAI_BASE_URL"]))
        command = services["llm"]["command"]
        assert llm.hostname == "llm" and command[command.index("--port") + 1] == str(llm.port)


def test_commands_use_flags_the_cli_has(compose: dict[str, Any]) -> None:
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    for name in FRESHRAG_SERVICES:
        command = compose["services"][name]["command"]
        sub = click_app.commands[command[0]]
        flags = {opt for p in sub.params for opt in p.opts}
        used = {c for c in command[1:] if c.startswith("-")}
        assert used <= flags, f"{name} uses flags the CLI lacks: {used - flags}"
        cli_params(command)  # and the values parse


def test_ingest_processes_form_one_bytewax_cluster(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 processes with ids 0 and 1, the same address list (each process's own entry is its
    service name, on a port it exposes), the same worker count, recovery on."""
    services = compose["services"]
    params = {name: cli_params(services[name]["command"]) for name in INGEST}
    assert {name: p["process_id"] for name, p in params.items()} == {"ingest-0": 0, "ingest-1": 1}
    addresses = {p["addresses"] for p in params.values()}
    assert len(addresses) == 1, f"processes disagree on the cluster: {addresses}"
    cluster = next(iter(addresses)).split(";")
    assert len(cluster) == len(INGEST)
    for name, p in params.items():
        host, port = cluster[p["process_id"]].split(":")
        assert host == name, f"{name} would listen on {host}'s address"
        assert port in [str(e) for e in services[name]["expose"]]
    assert {p["workers"] for p in params.values()} == {2}
    assert {p["snapshot_interval"] for p in params.values()} == {5.0}
    for name, p in params.items():
        assert not p["no_recovery"], f"{name} runs without recovery"
        assert services[name]["restart"] == "unless-stopped"
        # the options are valid for a multi-process cluster (it needs Qdrant server)
        check_options(
            settings_of(services[name], monkeypatch),
            IngestOptions(
                workers=p["workers"],
                process_id=p["process_id"],
                addresses=p["addresses"].split(";"),
                recovery_dir=p["recovery_dir"],
                snapshot_interval=timedelta(seconds=p["snapshot_interval"]),
                topic_partitions=p["topic_partitions"],
            ),
        )
    assert env_of(services["ingest-0"]) == env_of(services["ingest-1"])


def test_ingest_processes_share_one_recovery_volume(compose: dict[str, Any]) -> None:
    """bytewax resumes a cluster from one set of partitions that every process sees: the same
    named volume at the same path in every process, initialised by ingest-0 before ingest-1
    starts (so the first start never initialises it twice at once)."""
    services = compose["services"]
    mounts = set()
    for name in INGEST:
        recovery = str(cli_params(services[name]["command"])["recovery_dir"])
        volume = [v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == recovery]
        assert len(volume) == 1, f"{name}: nothing mounted at {recovery}"
        assert not volume[0].startswith((".", "/")), f"{name}: {volume[0]} is not a named volume"
        mounts.add((volume[0], recovery))
    assert len(mounts) == 1, f"the processes see different recovery dirs: {mounts}"
    volume, recovery = next(iter(mounts))
    assert volume in compose["volumes"]
    assert services["ingest-1"]["depends_on"]["ingest-0"] == {"condition": "service_healthy"}
    health = " ".join(services["ingest-0"]["healthcheck"]["test"])
    assert f"{recovery}/part-" in health and f"{recovery}/.init" in health


def test_kafka_has_partitions_for_every_worker(compose: dict[str, Any]) -> None:
    """4 partitions whoever creates the topic (ingest or the broker on first use), and at least
    one per worker of the cluster, or workers idle."""
    services = compose["services"]
    assert str(services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == "4"
    params = [cli_params(services[name]["command"]) for name in INGEST]
    assert {p["topic_partitions"] for p in params} == {4}
    assert sum(p["workers"] for p in params) <= 4


def test_serve_replicas_are_identical_on_their_own_host_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["serve-1"]["command"] == services["serve-2"]["command"]
    assert env_of(services["serve-1"]) == env_of(services["serve-2"])
    host_ports = []
    for name in SERVE:
        service = services[name]
        port = str(cli_params(service["command"])["port"] or env_of(service)["FRESHRAG_API_PORT"])
        assert port == env_of(service)["FRESHRAG_API_PORT"]
        (published,) = published_ports(service)
        host_port, container_port = published.rsplit(":", 1)
        assert container_port == port, f"{name} publishes {published}, listens on {port}"
        host_ports.append(host_port)
        assert service["restart"] == "unless-stopped"
    assert len(set(host_ports)) == len(SERVE), f"replicas share a host port: {host_ports}"


def test_prometheus_scrapes_every_process_on_its_port(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    services = compose["services"]
    expected = {f"{n}:{env_of(services[n])['FRESHRAG_METRICS_PORT']}" for n in INGEST}
    expected |= {f"{n}:{env_of(services[n])['FRESHRAG_API_PORT']}" for n in SERVE}
    assert expected <= targets, sorted(expected - targets)
    for name in INGEST:
        port = env_of(services[name])["FRESHRAG_METRICS_PORT"]
        assert port in [str(e) for e in services[name]["expose"]]
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus/prometheus.yml:") for m in mounts)


def test_dockerfile_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["freshrag"]' in text
    assert "HF_HUB_OFFLINE=1" in text and "EXPOSE 8000 9464" in text
    for copied in ("pyproject.toml", "src"):
        assert re.search(rf"^COPY .*{copied}", text, re.M)


def test_qdrant_and_kafka_are_not_published_and_qdrant_needs_a_key(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither has authentication on a published port: Qdrant requires an API key taken from
    the environment (no default), and neither publishes a port outside the compose network."""
    services = compose["services"]
    for name in ("qdrant", "kafka", "llm", *INGEST):
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
            assert name in SERVE or port.startswith("127.0.0.1:"), f"{name}: {port}"
