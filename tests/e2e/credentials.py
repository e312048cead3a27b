"""Helpers of the OpenStack suites for each compute's own credentials: read
them from a compute's rendered files, try them from a node's namespace
(``credentials_probe.py``, with the OpenStack environment's Python), and
ask the control's RabbitMQ what it holds."""

from __future__ import annotations

import configparser
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.netns import Host, clean_env
from sandbox.openstack_env import PREFIX

PROBE = Path(__file__).with_name("credentials_probe.py")
NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
AGENT_CONF = "neutron/neutron.conf.d/microstackd-agent.conf"
#: nova-compute's sections with a Keystone user.
SECTIONS = ("keystone_authtoken", "service_user", "placement", "neutron")


def rendered_credentials(host: Host) -> dict[str, str]:
    """The credentials in a compute's rendered files (what a thief would copy)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(host.workdir / "etc" / NOVA_COMPUTE_CONF)
    agent = configparser.ConfigParser(interpolation=None)
    agent.read(host.workdir / "etc" / AGENT_CONF)
    return {
        "url": parser["DEFAULT"]["transport_url"],
        "agent_url": agent["DEFAULT"]["transport_url"],
        "auth_url": parser["placement"]["auth_url"],
        "rabbitmq_user": urlsplit(parser["DEFAULT"]["transport_url"]).username or "",
        **{f"{s}_user": parser[s]["username"] for s in SECTIONS},
        **{f"{s}_password": parser[s]["password"] for s in SECTIONS},
    }


def try_credentials(host: Host, creds: dict[str, str], other: str = "") -> dict[str, Any]:
    """Try ``creds`` from ``host``'s namespace: RabbitMQ, Keystone (and ``other``'s queues)."""
    argv = [str(PREFIX / "bin" / "python"), str(PROBE), "try", creds["url"], creds["auth_url"]]
    argv += [creds["placement_user"], creds["placement_password"], other]
    result = host.run(argv, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def hold_login(host: Host, creds: dict[str, str]) -> subprocess.Popen[str]:
    """A RabbitMQ login with ``creds`` kept open from ``host``'s namespace."""
    argv = [str(PREFIX / "bin" / "python"), str(PROBE), "hold", creds["url"]]
    proc = host.popen(argv, env=clean_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"connected": True}
    return proc


def rabbitmqctl(control: Host, *args: str) -> str:
    """rabbitmqctl against the control role's RabbitMQ (its default ports)."""
    assert control.state_dir is not None
    env = {
        "HOME": str(control.state_dir / "services" / "rabbitmq"),
        "RABBITMQ_NODENAME": "rabbit@localhost",
        "ERL_EPMD_PORT": "14369",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONF_ENV_FILE": "/dev/null",
    }
    result = control.run(
        ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-q", "-n", "rabbit@localhost", *args],
        env=clean_env(env),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return str(result.stdout)
