"""docker/compose.yaml: validated by `docker compose config` where Compose runs, and always
parsed and checked for what an on-prem install relies on (GPU, volumes, health, env, port)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.config import Settings

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER_DIR / "compose.yaml"
DATA, MODELS = "/var/lib/teller/data", "/var/lib/teller/models"


class ComposeLoader(yaml.SafeLoader):
    """Compose's own YAML tags (`!reset`, `!override`) read as plain values."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not compose_works(), reason="no docker compose plugin on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    for profile in ("train", "postgres"):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "--profile", profile, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_teller_service_reserves_a_gpu_and_keeps_data_on_volumes() -> None:
    compose = load(COMPOSE)
    teller = compose["services"]["teller"]
    [device] = teller["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert str(device["count"]).endswith("1}") or device["count"] == 1
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in teller["volumes"]}
    assert mounts[DATA] == "teller-data"
    assert mounts[MODELS].endswith("teller-models}") or mounts[MODELS] == "teller-models"
    assert {"teller-data", "teller-models"} <= set(compose["volumes"])
    assert teller["restart"] == "unless-stopped"
    assert teller["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER_DIR.parent / teller["build"]["context"].replace("..", "")).is_dir()


def test_port_is_published_on_localhost_only_by_default() -> None:
    [port] = load(COMPOSE)["services"]["teller"]["ports"]
    published, container = port.rsplit(":", 1)
    assert container == "8000"
    assert published.startswith("${TELLER_PUBLISH:-127.0.0.1:")


def test_health_check_asks_readyz_and_outlasts_model_loading() -> None:
    health = load(COMPOSE)["services"]["teller"]["healthcheck"]
    assert "http://127.0.0.1:8000/readyz" in health["test"]
    assert health["start_period"] in ("10m", "600s")
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile


def test_stop_grace_outlasts_the_servers_own() -> None:
    teller = load(COMPOSE)["services"]["teller"]
    env = dotenv(DOCKER_DIR / "teller.env.example")
    assert teller["stop_signal"] == "SIGTERM"
    assert int(teller["stop_grace_period"].rstrip("s")) > float(
        env["TELLER_SHUTDOWN_GRACE_SECONDS"]
    )


def dotenv(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_env_file_is_wired_and_names_only_real_settings() -> None:
    compose = load(COMPOSE)
    for name in ("teller", "train"):
        paths = [entry["path"] for entry in compose["services"][name]["env_file"]]
        assert paths == ["./teller.env.example", "./teller.env"]
    env = dotenv(DOCKER_DIR / "teller.env.example")
    fields = set(Settings.model_fields)
    unknown = [k for k in env if k.removeprefix("TELLER_").lower() not in fields]
    assert not unknown, f"not settings: {unknown}"
    # The example is valid as a whole: Settings accepts every value in it.
    Settings(**{k.removeprefix("TELLER_").lower(): v for k, v in env.items()})
    assert env["TELLER_ALLOW_HUB_DOWNLOADS"] == "false"
    assert env["TELLER_LOG_PROMPTS"] == "false"


def test_train_is_a_one_off_job_on_the_same_volumes() -> None:
    services = load(COMPOSE)["services"]
    train, teller = services["train"], services["teller"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"][-2:] == ["teller", "train"]
    assert train["restart"] == "no" and "ports" not in train
    mounts = set(teller["volumes"][:2])
    assert mounts <= set(train["volumes"]), "training sees the same data and models"
    assert train["deploy"] == teller["deploy"]
    # The runs it writes are the ones the server can import from.
    [runs_rw] = [v for v in train["volumes"] if v.startswith("teller-runs:")]
    [runs_ro] = [v for v in teller["volumes"] if v.startswith("teller-runs:")]
    assert runs_rw.split(":")[1] == train["working_dir"] + "/training/runs"
    assert runs_ro.endswith(":ro")


def test_postgres_is_optional_and_matches_the_documented_url() -> None:
    postgres = load(COMPOSE)["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["environment"]["POSTGRES_DB"] == "teller"
    example = (DOCKER_DIR / "teller.env.example").read_text()
    assert "postgresql+psycopg://teller:" in example and "@postgres:5432/teller" in example


def test_cpu_override_drops_the_gpu_reservation() -> None:
    cpu = load(DOCKER_DIR / "compose.cpu.yaml")["services"]
    assert "deploy" in cpu["teller"] and cpu["teller"]["deploy"] is None
    assert cpu["teller"]["environment"]["TELLER_DEVICE"] == "cpu"
