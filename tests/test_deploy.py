"""The Kubernetes form (deploy/rayservice.yaml), checked without a cluster: the manifest against KubeRay's
RayService CRD schema (deploy/schema/, from ray-project/kuberay's ray.io_rayservices.yaml, v1), its Serve config
against Ray Serve's own schema, its server config against ours, and each variant's deployment options against
Ray Serve's."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "rayservice.yaml"
CRD_SCHEMA = ROOT / "deploy" / "schema" / "ray.io_rayservices.v1.schema.json.gz"


def test_the_rayservice_manifest_is_valid():
    manifest = yaml.safe_load(MANIFEST.read_text())
    schema = json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))
    jsonschema.validate(manifest, schema)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"

    # a manifest the CRD would refuse, to show the check bites
    broken = {**manifest, "spec": {**manifest["spec"], "rayClusterConfig": {"headGroupSpec": "x"}}}
    try:
        jsonschema.validate(broken, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the CRD schema accepted a broken manifest")


def test_its_serve_and_server_configs_are_valid():
    from ray.serve.schema import ServeDeploySchema

    from server.config import ServerConfig
    from server.ray_serve import VariantReplica, replica_options

    serve_config = ServeDeploySchema.model_validate(
        yaml.safe_load(yaml.safe_load(MANIFEST.read_text())["spec"]["serveConfigV2"])
    )
    (app,) = serve_config.applications
    assert app.import_path == "server.ray_serve:application"
    module, name = app.import_path.split(":")
    assert callable(getattr(__import__(module, fromlist=[name]), name))
    server = ServerConfig.model_validate(app.args["server"])  # (paths are the cluster's: not resolved here)
    for variant in server.variants:
        VariantReplica.options(**replica_options(variant))  # Ray Serve refuses options it does not take
    long = server.variant("long")
    assert long.ray.num_gpus == long.engine.tensor_parallel_size == 2
