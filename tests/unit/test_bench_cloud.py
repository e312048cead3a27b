"""The benchmark's ``cloud`` part without a cloud: which plan --quick and
--parts choose, the summary's maths, the message when the machine lacks
what the part needs (bench/cloud.py, bench/run.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench import cloud
from sandbox import netns, openstack_env

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def run() -> Iterator[ModuleType]:
    """bench/run.py, imported the way ``python bench/run.py`` sees its siblings."""
    name = "bench_run_under_test"
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / "run.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCH))


def test_the_full_run_has_the_cloud_part_with_its_full_plan(run: ModuleType) -> None:
    plan, parts = run.choose(False)
    assert "cloud" in parts and "lxd" in parts
    assert (plan.cloud.inits, plan.cloud.joins, plan.cloud.warm_launches) == (3, 3, 3)


def test_the_full_run_takes_the_load_generators_bursts_last(run: ModuleType) -> None:
    _, parts = run.choose(False)
    assert parts[-2:] == ["streams", "scale"]
    assert parts.index("cli") < parts.index("scale") and parts.index("cloud") < parts.index("scale")


def test_settle_waits_for_the_load_to_fall_and_no_longer_than_it_may(run: ModuleType) -> None:
    loads = iter([9.0, 4.0, 1.2, 0.5])
    slept: list[float] = []
    assert run.settle(1.5, 180.0, lambda: next(loads), slept.append) == (10.0, 1.2)
    assert slept == [5.0, 5.0]
    slept.clear()
    assert run.settle(1.5, 12.0, lambda: 20.0, slept.append) == (15.0, 20.0)
    assert run.settle(1.5, 180.0, lambda: 0.3, slept.append)[0] == 0.0


def test_quick_leaves_the_cloud_out_unless_parts_names_it(run: ModuleType) -> None:
    _, parts = run.choose(True)
    assert "cloud" not in parts and "lxd" not in parts and "overhead" in parts
    plan, parts = run.choose(True, "cloud")
    assert parts == ["cloud"]
    assert (plan.cloud.inits, plan.cloud.joins, plan.cloud.warm_launches) == (1, 2, 2)
    plan, parts = run.choose(False, "floor, cloud")
    assert parts == ["floor", "cloud"] and plan.cloud.inits == 3


def test_an_unknown_part_is_named(run: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"unknown parts \['clod'\]"):
        run.choose(True, "cloud,clod")


def _launch(seconds: float, cold: bool, load: float) -> dict[str, Any]:
    return {"launch_to_login_s": seconds, "cold": cold, "load_1m_at_start": load}


def test_the_summary_spreads_each_figure_with_the_load_of_each_sample() -> None:
    result = {
        "inits": [
            {"init_s": 80.0, "load_1m_at_start": 1.5},
            {"init_s": 100.0, "load_1m_at_start": 3.0},
            {"init_s": 70.0, "load_1m_at_start": 0.5},
        ],
        "joins": [
            {"join_s": 18.0, "ok": True, "load_1m_at_start": 2.0},
            {"join_s": 99.0, "ok": False, "load_1m_at_start": 9.0},  # failed: not a figure
            {"join_s": 23.0, "ok": True, "load_1m_at_start": 2.5},
        ],
        "launches": [
            _launch(41.0, True, 4.0),
            _launch(20.0, False, 1.0),
            _launch(35.0, False, 2.0),
            _launch(25.0, False, 3.0),
        ],
    }
    s = cloud.summarise(result)
    init = s["control_init_s"]
    assert (init["n"], init["min"], init["median"], init["max"]) == (3, 70.0, 80.0, 100.0)
    assert init["load_1m"] == [1.5, 3.0, 0.5]
    assert init["goal_s"] == 90.0 and init["median_meets_goal"] is True
    join = s["join_s"]
    assert (join["n"], join["min"], join["median"], join["max"]) == (2, 18.0, 20.5, 23.0)
    assert join["load_1m"] == [2.0, 2.5] and join["median_meets_goal"] is False
    cold = s["launch_cold_s"]
    assert (cold["n"], cold["median"], cold["load_1m"]) == (1, 41.0, [4.0])
    assert "goal_s" not in cold  # no goal for a cold launch
    warm = s["launch_warm_s"]
    assert (warm["min"], warm["median"], warm["max"]) == (20.0, 25.0, 35.0)
    assert warm["samples"] == [20.0, 35.0, 25.0] and warm["median_meets_goal"] is True


def test_a_figure_without_samples_is_empty() -> None:
    s = cloud.summarise({"inits": [{"init_s": 60.0, "load_1m_at_start": 1.0}], "joins": [],
                         "launches": []})  # fmt: skip
    assert s["join_s"] == {} and s["launch_warm_s"] == {} and s["control_init_s"]["n"] == 1


def test_without_root_the_part_says_to_run_it_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(cloud.Missing, match=r"needs root: .*sudo \.venv/bin/python bench/run\.py"):
        cloud.check()


def test_without_the_openstack_environment_the_part_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "unavailable_reason", lambda: None)
    with pytest.raises(cloud.Missing) as raised:
        cloud.check(tmp_path)
    message = str(raised.value)
    assert f"the OpenStack environment in {tmp_path}" in message
    assert (
        f"openstack/install-env.sh {tmp_path}" in message and "sandbox/openstack_env.py" in message
    )
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nova-compute").touch()
    cloud.check(tmp_path)  # found: nothing missing


def test_without_namespaces_the_part_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "unavailable_reason", lambda: "`ip netns add` failed: nope")
    assert cloud.missing(Path("/"))[0].startswith("network namespaces: `ip netns add` failed")


def test_run_py_stops_with_the_message_not_a_traceback(
    run: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(openstack_env, "PREFIX", tmp_path / "absent")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "unavailable_reason", lambda: None)
    monkeypatch.setattr(sys, "argv", ["run.py", "--quick", "--parts", "cloud"])
    with pytest.raises(SystemExit) as exited:
        run.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "run.py: error: the cloud part needs the OpenStack environment in" in err
    assert "Traceback" not in err


def test_the_results_table_shows_each_cloud_figure_beside_its_goal(run: ModuleType) -> None:
    summary = cloud.summarise(
        {
            "inits": [{"init_s": 95.0, "load_1m_at_start": 4.5}],
            "joins": [{"join_s": 12.0, "ok": True, "load_1m_at_start": 1.0}],
            "launches": [_launch(40.0, True, 2.0), _launch(25.5, False, 3.0)],
        }
    )
    table = run.report.table({"cloud": {"summary": summary}}).splitlines()
    init = next(line for line in table if "control init" in line)
    assert "(1, load 4.5)" in init and "95 s" in init and "< 90 s" in init
    assert init.endswith("MISS")
    join = next(line for line in table if "join" in line)
    assert "12 s" in join and join.endswith("pass")
    cold = next(line for line in table if "cold" in line)
    assert "40 s" in cold and not cold.endswith(("pass", "MISS"))  # no goal for a cold launch
    warm = next(line for line in table if "warm" in line)
    assert "25.5 s" in warm and "< 30 s" in warm and warm.endswith("pass")
