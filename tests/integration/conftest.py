"""Fixtures of the integration tests that drive the operator: a namespace per test, its Models client, the CRD."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.operator_support import GROUP, PLURAL, Models, OperatorProcess, install_crd


@pytest.fixture(scope="session")
def crd(cluster):
    install_crd(cluster)
    return f"{PLURAL}.{GROUP}"


@pytest.fixture(scope="module")
def md_namespace(cluster, crd):
    name = f"md-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(cluster, md_namespace, tmp_path_factory):
    process = OperatorProcess(
        cluster, ["--namespace", md_namespace], tmp_path_factory.mktemp("operator") / "operator.log"
    )
    process.start()
    yield process
    process.stop()
    print(process.log()[-5000:])


@pytest.fixture(scope="module")
def models(cluster, md_namespace):
    return Models(cluster, md_namespace)


@pytest.fixture
def created(models):
    """Applies ModelDeployments for one test and deletes them after it, freeing the fake GPUs."""
    names = []

    def create(body: dict) -> str:
        models.apply(body)
        names.append(body["metadata"]["name"])
        return body["metadata"]["name"]

    yield create
    for name in names:
        models.kubectl("delete", "md", name, "--wait=false", "--ignore-not-found", check=False)
