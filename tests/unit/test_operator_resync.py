import threading

from moe_operator.resync import Resync


class Listing:
    def __init__(self, failures: int):
        self.failures = failures

    def list_model_deployments(self, namespace):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API server unavailable")
        return [(namespace or "a", "one"), (namespace or "b", "two")]


class Recorder:
    def __init__(self):
        self.passes = []
        self.enough = threading.Event()

    def reconcile(self, namespace, name):
        self.passes.append((namespace, name))
        if name == "one":
            raise RuntimeError("this pass fails; the others go on")
        if len(self.passes) >= 4:
            self.enough.set()


def test_every_listed_model_deployment_is_reconciled_despite_failures():
    reconciler = Recorder()
    resync = Resync(Listing(failures=1), reconciler, ["x", "y"], interval=0.01)
    resync.start()
    assert reconciler.enough.wait(5)
    resync.stop()
    assert reconciler.passes[:4] == [("x", "one"), ("x", "two"), ("y", "one"), ("y", "two")]


def test_all_namespaces_when_none_are_named():
    reconciler = Recorder()
    resync = Resync(Listing(failures=0), reconciler, [], interval=0.01)
    resync.start()
    assert reconciler.enough.wait(5)
    resync.stop()
    assert reconciler.passes[:2] == [("a", "one"), ("b", "two")]
