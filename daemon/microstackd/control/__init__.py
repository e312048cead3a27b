"""The control's domain: everything only the control node does.

    cluster    create the cluster (init), its secrets, control.yaml
    bootstrap  the control's side of the password / token bootstrap
    tokens     one-time join tokens
    enrol      a compute's enrolment steps, run on the step engine
    members    remove, heartbeats, status, launch
    plane      the control role (the OpenStack control plane) as init's steps
    config     control.yaml and the settings issued to computes
    ratelimit  per-source lock-out after failed bootstraps

It may use trust, enrolment, node, cloud, peers, store and model; never
api/ nor grpc (tests/unit/test_layers.py).
"""
