"""What both real-cluster suites do first: connect through $KUBECONFIG and install the generated CRD."""
from __future__ import annotations

import os

import yaml

from tests.conftest import REPO


def connect_and_install_crd():
    """An ApiClient for $KUBECONFIG's cluster, with crds/asyncmtlrun.yaml created (or updated to this
    checkout's version: server-side validation then runs our CEL rules)."""
    import kubernetes

    kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    api = kubernetes.client.ApiClient()
    ext = kubernetes.client.ApiextensionsV1Api(api)
    crd = yaml.safe_load((REPO / "crds" / "asyncmtlrun.yaml").read_text())
    try:
        ext.create_custom_resource_definition(crd)
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
        ext.patch_custom_resource_definition(crd["metadata"]["name"], crd)
    return api
