"""Enrolment: the step engine every plan runs on.

    machine   the plan and its state machine: events in, commands out (pure)
    runner    the engine: runs step actions, records (or streams) what the machine emits
    events    fan-out of recorded events to live streams, with replay from the store
    backoff   capped exponential back-off between attempts

``machine`` is pure: it may import ``model`` and ``errors`` only
(tests/unit/test_layers.py).
"""
