"""Reading what the routers report from a Prometheus answer (io/prometheus.py)."""

from moe_operator.decisions.autoscale import RouterDemand
from moe_operator.decisions.promdata import NoData
from moe_operator.decisions.promql import router_demand
from moe_operator.io.prometheus import _router_demand


def series(name: str, pod: str, value: float) -> dict:
    return {"metric": {"__name__": name, "pod": pod}, "value": [1000.0, str(value)]}


def test_held_and_in_flight_add_up_over_the_routers_and_the_newest_request_counts():
    result = [
        series("moe_router_held_requests", "r1", 2),
        series("moe_router_held_requests", "r2", 1),
        series("moe_router_in_flight_requests", "r1", 3),
        series("moe_router_last_request_timestamp_seconds", "r1", 900.0),
        series("moe_router_last_request_timestamp_seconds", "r2", 950.0),
    ]
    assert _router_demand(result, now=1000.0, what="ns/md") == RouterDemand(held=3, in_flight=3, idle_s=50.0)


def test_no_router_series_is_no_data_not_idle():
    found = _router_demand([], now=1000.0, what="ns/md")
    assert isinstance(found, NoData) and found.reason == "NoSeries"
    garbled = _router_demand([{"metric": None}], now=1000.0, what="ns/md")
    assert isinstance(garbled, NoData) and garbled.reason == "QueryFailed"


def test_the_query_selects_the_model_deployment_escaped():
    query = router_demand('n"s', "md")
    assert 'namespace="n\\x22s"' in query and 'model_deployment="md"' in query
