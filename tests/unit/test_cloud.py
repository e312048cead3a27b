"""The control's cloud: which cloud, the helper's line protocol, nova-manage
detection, and the runner against a real stand-in script."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackd import cloud, control_config, enrolment, errors
from microstackd.rpc import convert


def test_resolve_prefers_the_section_then_os_cloud() -> None:
    section = {"name": "microstack", "clouds_yaml": "/s/clouds.yaml"}
    assert cloud.resolve(section, {"OS_CLOUD": "other"}) == cloud.CloudRef(
        "microstack", "/s/clouds.yaml"
    )
    assert cloud.resolve({}, {"OS_CLOUD": "other"}) == cloud.CloudRef("other", "")
    env = {"OS_CLOUD": "other", "OS_CLIENT_CONFIG_FILE": "/e/clouds.yaml"}
    assert cloud.resolve(None, env) == cloud.CloudRef("other", "/e/clouds.yaml")
    assert cloud.resolve({"clouds_yaml": "/s/c.yaml"}, {}) is None
    assert cloud.resolve("junk", {}) is None


def test_parse_line() -> None:
    assert cloud.parse_line(b'{"progress": "x", "waiting": true}\n') == cloud.Line(
        progress="x", waiting=True
    )
    assert cloud.parse_line('{"result": {"a": 1}}') == cloud.Line(result={"a": 1})
    assert cloud.parse_line('{"error": "boom", "kind": "quota"}') == cloud.Line(
        error="boom", kind="quota"
    )
    for junk in (b"", b"Warning: something", b"{not json", b"[1]", b'{"other": 1}'):
        assert cloud.parse_line(junk) is None


def test_nova_manage_detection(tmp_path: Path) -> None:
    prefix, root = tmp_path / "env", tmp_path / "etc"
    assert cloud.nova_manage_argv(None, root) is None
    assert cloud.nova_manage_argv(prefix, root) is None
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "nova-manage").touch()
    assert cloud.nova_manage_argv(prefix, root) is None  # no nova.conf: not our Nova
    (root / "nova").mkdir(parents=True)
    (root / "nova" / "nova.conf").touch()
    assert cloud.nova_manage_argv(prefix, root) == [
        str(prefix / "bin" / "nova-manage"),
        "--config-file",
        str(root / "nova" / "nova.conf"),
    ]


def test_compute_plan_admits_to_cloud_before_done() -> None:
    plan = enrolment.COMPUTE_PLAN
    assert plan[-2:] == (enrolment.ADMIT_TO_CLOUD, enrolment.DONE)
    assert plan.index(enrolment.CONFIGURE_NODE) < plan.index(enrolment.ADMIT_TO_CLOUD)


def test_control_config_reads_the_cloud_section(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    assert control_config.ensure(path, "10.0.0.1").cloud == ()
    control_config.record_cloud(path, tmp_path / "clouds.yaml")
    config = control_config.ensure(path, "10.0.0.1")
    assert cloud.resolve(dict(config.cloud), {}) == cloud.CloudRef(
        "microstack", str(tmp_path / "clouds.yaml")
    )


def _runner(tmp_path: Path, body: str) -> cloud.Runner:
    script = tmp_path / "ops.py"
    script.write_text(body)
    return cloud.Runner(cloud.CloudRef("c", "/x/clouds.yaml"), Path(sys.executable), script)


def test_runner_streams_progress_and_returns_the_result(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        "import json, os, sys\n"
        "req = json.load(sys.stdin)\n"
        "print('noise from a library')\n"
        "print(json.dumps({'progress': 'one', 'waiting': True}), flush=True)\n"
        "print(json.dumps({'result': {'op': sys.argv[1], 'req': req,"
        " 'cloud': os.environ['OS_CLOUD'], 'file': os.environ['OS_CLIENT_CONFIG_FILE']}}))\n",
    )
    seen: list[tuple[str, bool]] = []

    async def progress(message: str, waiting: bool) -> None:
        seen.append((message, waiting))

    result = asyncio.run(runner.run("admit", {"host": "n1"}, progress))
    assert seen == [("one", True)]
    assert result == {"op": "admit", "req": {"host": "n1"}, "cloud": "c", "file": "/x/clouds.yaml"}


def test_runner_raises_the_script_error(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        "import json, sys\nprint(json.dumps({'error': 'unknown image x', 'kind': 'error'}))\n"
        "sys.exit(1)\n",
    )
    with pytest.raises(errors.CloudError, match="unknown image x"):
        asyncio.run(runner.run("launch", {}))


def test_runner_reports_a_crash_and_a_timeout(tmp_path: Path) -> None:
    crash = _runner(tmp_path, "import sys\nsys.stderr.write('Traceback: boom\\n')\nsys.exit(3)\n")
    with pytest.raises(errors.CloudError, match="status 3.*boom"):
        asyncio.run(crash.run("view", {}))
    slow = _runner(tmp_path, "import time\ntime.sleep(30)\n")
    with pytest.raises(errors.CloudError, match="did not finish within 0.5 s"):
        asyncio.run(slow.run("view", {}, timeout=0.5))


def test_nova_view_and_launch_result_render() -> None:
    node = pb.Node(name="n1", role=pb.ROLE_COMPUTE)
    assert render.nova_text(node) == "-"
    assert render.node_dict(node)["nova"] is None
    node.nova.CopyFrom(
        convert.nova_host_to_pb(
            {"compute_service": "up", "hypervisor": "up", "running_instances": 2}
        )
    )
    assert render.nova_text(node) == "up, hv up, 2 running"
    assert render.node_dict(node)["nova"] == {
        "compute_service": "up",
        "hypervisor": "up",
        "running_instances": 2,
    }
    result = convert.launch_result_to_pb(
        {
            "name": "test",
            "id": "abc",
            "host": "n1",
            "status": "ACTIVE",
            "addresses": {"private": ["10.233.0.5", "10.232.0.101"]},
            "floating_ip": "10.232.0.101",
        }
    )
    assert render.launch_dict(result, "ssh -i k cirros@10.232.0.101") == {
        "name": "test",
        "id": "abc",
        "host": "n1",
        "status": "ACTIVE",
        "addresses": {"private": ["10.233.0.5", "10.232.0.101"]},
        "floating_ip": "10.232.0.101",
        "ssh": "ssh -i k cirros@10.232.0.101",
    }


def test_status_table_shows_nova_only_when_known() -> None:
    import io

    from rich.console import Console

    from microstackctl import render as r

    status = pb.StatusResponse(local_node="ctl", local_role=pb.ROLE_CONTROL)
    status.cluster.id = "c1"
    status.nodes.add(name="ctl", role=pb.ROLE_CONTROL, state="active")
    compute = status.nodes.add(name="n1", role=pb.ROLE_COMPUTE, state="active")

    def table() -> str:
        buf = io.StringIO()
        r.print_status(status, Console(file=buf, width=200, highlight=False))
        return buf.getvalue()

    assert "NOVA" not in table()
    compute.nova.CopyFrom(pb.NovaHost(compute_service="up", hypervisor="up", running_instances=1))
    out = table()
    assert "NOVA" in out and "up, hv up, 1 running" in out


def test_ensure_key_makes_and_reads_the_keypair(tmp_path: Path) -> None:
    import shutil

    from microstackctl import cmd_launch

    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen here")
    key = tmp_path / ".ssh" / "id_microstack"
    public = cmd_launch.ensure_key(key)
    assert public.startswith("ssh-ed25519 ") and key.exists()
    assert cmd_launch.ensure_key(key) == public  # kept, not remade
    assert cmd_launch.ssh_command(Path("~/.ssh/id_microstack"), "10.232.0.7") == (
        "ssh -i ~/.ssh/id_microstack cirros@10.232.0.7"
    )


def test_a_wait_streams_and_its_timeout_names_the_host_and_last_state() -> None:
    """cloud_ops.wait, run with the OpenStack environment's Python (where
    openstacksdk is); skipped where that environment is not installed."""
    import json
    import os
    import subprocess

    from microstackd.node.steps import helpers_dir

    python = Path(os.environ.get("MICROSTACK_OPENSTACK_PREFIX", "/opt/microstack-openstack/venv"))
    python = python / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no OpenStack environment at {python.parent.parent}")
    code = (
        "import sys, itertools\n"
        f"sys.path.insert(0, {str(helpers_dir())!r})\n"
        "import cloud_ops\n"
        "cloud_ops.POLL = 0.05\n"
        "n = itertools.count()\n"
        "print(cloud_ops.wait('x', lambda: (next(n) >= 2, 'state %d' % 1), 5, 'node1'))\n"
        "try:\n"
        "    cloud_ops.wait('nova-compute on node1 to be up',"
        " lambda: (False, 'nova-compute down, enabled'), 0.2, 'node1')\n"
        "except cloud_ops.Failure as exc:\n"
        "    print(cloud_ops.json.dumps({'failure': exc.message, 'kind': exc.kind}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    lines = [json.loads(line) if line.startswith("{") else line for line in out.splitlines()]
    assert lines[0] == {"progress": "waiting for x (0 s so far; state 1)", "waiting": True}
    assert lines[1]["progress"].startswith("x: state 1 after ")
    assert lines[2] == "state 1"
    failure = lines[-1]
    assert failure["kind"] == "timeout"
    assert failure["failure"].startswith("node1: timed out after 0 s waiting for nova-compute")
    assert failure["failure"].endswith("last state seen: nova-compute down, enabled")
