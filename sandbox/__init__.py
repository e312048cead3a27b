"""Real microstackd daemons on one machine: the demo (scripts/demo.py), the
integration and end-to-end tests and the benchmarks all start them here.

    launcher   start one daemon, wait for its ``ready`` line, read back the
               ports it bound, stop it (the one launcher)
    netns      multi-host clusters on one machine: one network namespace per host
    openstack_env  the OpenStack environment the real suites and the demo use,
               brought up to date with openstack/install-env.sh
"""
