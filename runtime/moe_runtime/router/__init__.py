"""`python -m moe_runtime router`: the inference router in front of one ModelDeployment's pods.

OpenAI API in, OpenAI API out: each request goes to one Ready pod, picked per request (not per connection) by
the strategy of `spec.routing`, its answer streamed back unbuffered. Pure decisions (endpoints, pod load,
prefixes, canary split, picking) apart from the I/O (the EndpointSlice and ModelDeployment watches, the load
scraper, the HTTP proxy). It needs no torch: it imports nothing of the model or the engine.
"""
