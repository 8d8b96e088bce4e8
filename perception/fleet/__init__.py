"""Fleet replay: many recorded drives replayed deterministically in parallel as Ray tasks, on this
machine or a cluster, aggregated into one report (`perception fleet-replay`, docs/FLEET.md).

    task.py     what runs in a Ray worker: one drive's `perception replay --speed max`, no Ray inside
    report.py   the aggregate: references, determinism across copies, latency, accuracy, table, JSON, plots
    command.py  the command: inputs, Ray (imported there only), scheduling, timeouts, progress

Ray is the `fleet` extra and is imported by command.py alone, inside the command: nothing the
vehicle runs imports this package.
"""
