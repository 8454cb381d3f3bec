"""Cluster templates stay valid: Ray's own launcher schema, and KubeRay manifests' essentials."""

from __future__ import annotations

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
