"""The Service proxy's table (hack/localservices/table.py): which Services get a port, which endpoints serve it."""

from __future__ import annotations

from localservices.table import ServicePort, endpoints_of, proxied_ports, services_file


def service(name, cluster_ip="10.96.0.10", ports=({"name": "http", "port": 80},), namespace="ns"):
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": cluster_ip, "ports": list(ports)},
    }


def endpoint_slice(service_name, entries, port_name="http", port=8000, namespace="ns"):
    return {
        "metadata": {"namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
        "ports": [{"name": port_name, "port": port}],
        "endpoints": [{"addresses": [ip], "conditions": conditions} for ip, conditions in entries],
    }


def test_headless_and_external_name_services_get_no_port():
    ports = proxied_ports(
        [
            service("plain"),
            service("headless", cluster_ip="None"),
            {**service("ext"), "spec": {"type": "ExternalName"}},
        ]
    )
    assert ports == [ServicePort("ns", "plain", "http", 80)]


def test_ready_endpoints_serve_and_terminating_ones_only_when_nothing_else_does():
    port = ServicePort("ns", "md", "http", 80)
    ready = {"ready": True, "serving": True, "terminating": False}
    leaving = {"ready": False, "serving": True, "terminating": True}
    starting = {"ready": False, "serving": False, "terminating": False}
    slices = [
        endpoint_slice("md", [("10.0.0.1", ready), ("10.0.0.2", leaving), ("10.0.0.3", starting)]),
        endpoint_slice("other", [("10.0.0.9", ready)]),
        endpoint_slice("md", [("10.0.0.8", ready)], namespace="elsewhere"),
    ]
    assert endpoints_of(port, slices) == ["10.0.0.1:8000"]
    assert endpoints_of(port, [endpoint_slice("md", [("10.0.0.2", leaving), ("10.0.0.3", starting)])]) == [
        "10.0.0.2:8000"
    ]


def test_an_unnamed_port_matches_the_slices_unnamed_port():
    (port,) = proxied_ports([service("md", ports=({"port": 80},))])
    assert port.name == "80"
    assert endpoints_of(port, [endpoint_slice("md", [("10.0.0.1", {"ready": True})], port_name="")]) == [
        "10.0.0.1:8000"
    ]


def test_the_services_file_names_each_service_by_its_first_port_and_each_port():
    http, metrics = ServicePort("ns", "md", "http", 80), ServicePort("ns", "md", "metrics", 9100)
    assert services_file({http: 40001, metrics: 40002}) == {
        "ns/md": "127.0.0.1:40001",
        "ns/md:http": "127.0.0.1:40001",
        "ns/md:metrics": "127.0.0.1:40002",
    }
