"""A node joining a cluster and staying joined.

bootstrap  THE joiner's side of the bootstrap (the daemon, the benchmarks
           and the adversarial tests all use it)
join       join: bootstrap, then follow (and relay) the enrolment the control runs
heartbeat  the heartbeats an enrolled member sends its control
callers    which certificate may make which kind of call on this node
"""
