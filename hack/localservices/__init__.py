"""The local stack's Service proxy: what kube-proxy does for a cluster's Services, on loopback.

Every Service with a cluster IP (not headless) gets a local port per Service port; a connection to it goes to
one Ready endpoint of the Service, picked in turn per connection (kube-proxy's choice: per connection, not per
request), and stays there until either side closes it, also when that endpoint later stops being Ready (a
cluster's conntrack keeps established connections too). With no Ready endpoint a connection goes to one that
is still serving while terminating, as kube-proxy does; with none at all it is closed at once. Endpoints come
from the EndpointSlices the cluster's controller writes; the pod addresses in them are reached through the local
kubelet's pod network (`pod-addresses.json`). `<state dir>/services.json` maps `"namespace/name"` to the
`"127.0.0.1:PORT"` of the Service's first port (and `"namespace/name:port"` to each port by name or number).

Files: table.py (which endpoints serve a Service port; pure), proxy.py (listeners and connections), and
__main__.py. Run by hack/localcluster.py as the component `localservices`.
"""
