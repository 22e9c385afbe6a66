"""The sidecar exports the per-adapter series under the names the operator reads and our runtime exports."""

from moe_operator.decisions.promql import ADAPTER_LOAD_ERROR, ADAPTER_LOADED
from moe_runtime.adapter_sync import server
from moe_runtime.metrics import LoraMetrics


def test_the_operator_reads_what_the_sidecar_and_the_runtime_export():
    assert (server.LOADED, server.LOAD_ERROR) == (ADAPTER_LOADED, ADAPTER_LOAD_ERROR)
    runtime_families = {family.name for family in LoraMetrics().describe()}
    assert {server.LOADED, server.LOAD_ERROR, server.LOAD_FAILURES} <= runtime_families
