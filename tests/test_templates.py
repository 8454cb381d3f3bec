"""Cluster templates stay valid (Ray's own launcher schema, KubeRay manifests' essentials) and keep
their control planes authenticated."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

TEMPLATES = Path(__file__).parents[1] / "cluster" / "templates"


def test_aws_launcher_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema violation
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instances
    assert any("pip install -e ." in cmd for cmd in config["setup_commands"])


def test_rays_schema_check_is_real() -> None:
    config = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    config["available_node_types"]["head"]["max_wrokers"] = 1  # a typo the schema must refuse
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_kuberay_manifests_have_what_kuberay_needs() -> None:
    cluster = yaml.safe_load((TEMPLATES / "kuberay-raycluster.yaml").read_text())
    job = yaml.safe_load((TEMPLATES / "kuberay-rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 5000}
    gpu = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]


def test_aws_template_turns_on_token_auth_and_mlflow_login_on_every_node() -> None:
    config = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    setup = " ".join(config["setup_commands"])
    # the token and the MLflow password come from the secrets store, into files only the user reads
    assert "umask 077" in setup and "secretsmanager get-secret-value" in setup
    assert "RAY_AUTH_MODE=token" in setup and "RAY_AUTH_TOKEN_PATH=" in setup
    assert "MLFLOW_TRACKING_PASSWORD=" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(". ~/.avsa/cluster.env" in c for c in starts), key
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head  # job submission: loopback, reached by `ray dashboard`
    (mlflow,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert "--app-name basic-auth" in mlflow and "MLFLOW_AUTH_ADMIN_PASSWORD=" in mlflow
    assert "0.0.0.0" not in head


def test_kuberay_cluster_has_token_auth_and_mlflow_login_from_one_secret() -> None:
    cluster = yaml.safe_load((TEMPLATES / "kuberay-raycluster.yaml").read_text())
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "avsa-auth"}
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [group["template"]["spec"]["containers"][0] for group in spec["workerGroupSpecs"]]
    for container in [head, *workers]:
        env = {e["name"]: e for e in container["env"]}
        ref = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "avsa-auth", "key": "mlflow_password"}
    start = " ".join(head["lifecycle"]["postStart"]["exec"]["command"])
    assert "--app-name basic-auth" in start
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"' in start
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # never exposed outside the cluster
    job = yaml.safe_load((TEMPLATES / "kuberay-rayjob.yaml").read_text())
    assert not re.search(r"password|secret|token|access_key", job["spec"]["entrypoint"], re.IGNORECASE)
