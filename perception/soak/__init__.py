"""`perception soak`: a launch run for minutes with faults injected at random, its invariants checked
the whole time. `command` (phases, the command), `faults` (what is injected), `invariants` (what is
judged, from the nodes' own stamps), `observer` (the sockets feeding it), `resources` (memory, file
descriptors, shared memory), `report`."""
