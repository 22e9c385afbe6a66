"""Tools around the runtime: the random-checkpoint writer (`make-checkpoint`) and the load generator (`loadgen`)."""
