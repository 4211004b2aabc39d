"""cluster.yaml: valid for Ray's own autoscaler validator (offline), nothing bound to a public
interface, no secrets, and every file and entry point its commands use exists in the project."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"


def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k, [])]


def test_ray_validates_the_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config())
    validate_config(prepared)  # raises on a schema violation
    assert prepared["head_node_type"] == "head.cpu"
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != "head.cpu"}
    assert workers and all(v["max_workers"] >= 1 and v["min_workers"] == 0 for v in workers.values())
    assert all(v["node_config"]["InstanceType"].startswith(("g5.", "g6e.", "p4", "p5")) for v in workers.values())
    assert prepared["available_node_types"]["head.cpu"]["resources"] == {"CPU": 0}  # no trials on the head


def test_nothing_listens_on_a_public_interface_and_no_secrets():
    text = CLUSTER.read_text()
    assert "0.0.0.0" not in text
    head = " ".join(config()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert re.search(r"scripts/tracking_server\.sh \S+ \$\(hostname -I", head)  # the private address only
    # secrets are made on the head (scripts/cluster_secrets.sh), never written here
    assert not re.search(r"(?i)aws_(secret|access)|AKIA[0-9A-Z]{12}|RAY_AUTH_TOKEN=|admin_password|[0-9a-f]{32}", text)
    assert not re.search(r"postgresql://[^@\s]*:[^@\s]*@", text)  # no password in a database URL


def test_every_node_starts_ray_with_token_auth_and_gets_the_head_s_token():
    cfg = config()
    starts = [c for k in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[k] if " start " in c]
    assert len(starts) == 2 and all(re.search(r"RAY_AUTH_MODE=token \S+/ray start ", c) for c in starts), starts
    # made on the head before Ray starts there, then copied to each worker before it starts Ray
    assert "bash ~/rankhouse/scripts/cluster_secrets.sh" in cfg["head_setup_commands"]
    assert {"~/.ray/auth_token", "~/.mlflow/credentials"} <= set(cfg["cluster_synced_files"])
    # the MLflow server's store is the database the cluster profile's searches use
    gpu = yaml.safe_load((ROOT / "search_spaces" / "techhouse_gpu.yaml").read_text())
    assert f"tracking_server.sh {gpu['tracking']['backend']} " in " ".join(cfg["head_start_ray_commands"])


def test_commands_use_files_and_entry_points_that_exist():
    cfg = config()
    cmds = commands(cfg)
    for script in {m for c in cmds for m in re.findall(r"\bscripts/[\w./-]+", c)}:
        assert (ROOT / script).is_file(), script
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for tool in {m for c in cmds for m in re.findall(r"\.venv/bin/(\w+)", c)} - {"activate", "python"}:
        assert tool in deps, f"{tool} is run from the venv but no dependency provides it"
    assert cfg["file_mounts"]["~/rankhouse"] == "."  # the repository itself, synced from where ray up runs
    readme = (ROOT / "README.md").read_text()
    for module in set(re.findall(r"python -m (platform\.\w+)", readme)):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
