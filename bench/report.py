"""The results table: figure, reference, ratio, target, verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    what: str
    figure: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.1f} ms"


def _ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return ""
    return f"{a / b:.1f}x"


def _split(split: dict[str, float]) -> str:
    if not split:
        return ""
    return (
        f"anon {split['anon']:.0f} + file {split['file']:.0f} MB; PSS {split.get('pss', 0):.0f} MB"
    )


#: The N whose figures the scale targets judge (issue 19: 10,000 computes).
SCALE_TARGET_N = 10000
#: Idle RSS per daemon, MB (issue 19).
IDLE_RSS_TARGET_MB = 50


def _verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def _range(summary: dict[str, Any]) -> str:
    if "min_ms" not in summary:
        return ""
    return f"min {_ms(summary['min_ms'])}, max {_ms(summary['max_ms'])}"


def _lxd_rows(lxd: dict[str, Any]) -> list[Row]:
    """LXD's token join beside ours, interleaved in one run (bench/lxd.py)."""
    theirs, kdf = lxd["lxd_token"]["p50_ms"], lxd["kdf"]["p50_ms"]
    token, password = lxd["ours_token"]["p50_ms"], lxd["ours_password"]["p50_ms"]
    n = lxd["rounds"]
    return [
        Row(
            f"LXD {lxd['lxd_version']} token join p50 ({n}, `lxd init --preseed`)",
            _ms(theirs),
            _range(lxd["lxd_token"]),
        ),
        Row(
            f"  `microstackctl join --token` p50, same rounds ({n})",
            _ms(token),
            f"LXD token {_ms(theirs)}",
            f"{token / theirs:.2f}x (per round {lxd['token_ratio_per_round_p50']:.2f}x)",
            "<= 0.75x LXD",
            _verdict(token <= 0.75 * theirs),
        ),
        Row(
            f"  `microstackctl join` (password) p50, same rounds ({n})",
            _ms(password),
            f"LXD token + KDF {_ms(theirs + kdf)}",
            f"{password / (theirs + kdf):.2f}x",
            "<= LXD token + KDF, < 400 ms",
            _verdict(password <= theirs + kdf and password < 400),
        ),
        Row("  KDF (scrypt) p50, this run", _ms(kdf)),
        Row(
            "  min / max: ours token, ours password",
            f"{_ms(lxd['ours_token']['min_ms'])} / {_ms(lxd['ours_token']['max_ms'])}",
            f"{_ms(lxd['ours_password']['min_ms'])} / {_ms(lxd['ours_password']['max_ms'])}",
        ),
    ]


#: The cloud part's figures (bench/cloud.py's summary), as the table names them.
CLOUD_FIGURES = {
    "control_init_s": "Real cloud: control init",
    "join_s": "Real cloud: a compute's join",
    "launch_cold_s": "Real cloud: launch -> ssh login, cold",
    "launch_warm_s": "Real cloud: launch -> ssh login, warm",
}


def _cloud_rows(summary: dict[str, Any]) -> list[Row]:
    """min / median / max of each figure of the real cloud, with the loads."""
    out = []
    for key, what in CLOUD_FIGURES.items():
        s = summary.get(key)
        if not s:
            continue
        loads = "/".join(f"{x:g}" for x in s["load_1m"])
        goal = s.get("goal_s")
        out.append(
            Row(
                f"{what} median ({s['n']}, load {loads})",
                f"{s['median']:g} s",
                f"min {s['min']:g} s, max {s['max']:g} s",
                "",
                f"< {goal:g} s" if goal is not None else "",
                _verdict(s["median_meets_goal"]) if goal is not None else "",
            )
        )
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    ref = r.get("reference", {})
    tls = ref.get("tls_rpc", {})
    mtls = ref.get("mtls_rpc", {})
    ov = r.get("overhead", {})
    if ov:
        jp50, jp99 = r["join_p50_ms"], r["join_p99_ms"]
        tp50, tp99 = r["tls_rpc_p50_ms"], tls.get("p99_ms", math.nan)
        mp50 = mtls.get("p50_ms", math.nan)
        out.append(
            Row(
                f"join overhead p50, KDF excluded ({ov['joins']} joins)",
                _ms(jp50),
                f"TLS+RPC {_ms(tp50)}",
                _ratio(jp50, tp50),
                "< 50 ms and <= 3x ref",
                _verdict(jp50 < 50 and jp50 <= 3 * tp50),
            )
        )
        out.append(
            Row(
                "join overhead p99, KDF excluded",
                _ms(jp99),
                f"TLS+RPC {_ms(tp99)}",
                _ratio(jp99, tp99),
            )
        )
        out.append(Row("  reference (a): new TLS channel + unary RPC p50", _ms(tp50)))
        out.append(Row("  reference: new mTLS channel + unary RPC p50", _ms(mp50)))
        fetch = ov.get("phases_p50_ms", {}).get("fetch_cert", math.nan)
        floor = fetch + tp50 + mp50
        out.append(
            Row(
                "  the protocol's 3 handshakes: cert fetch + (a) + mTLS p50",
                _ms(floor),
                f"{_ms(fetch)} + {_ms(tp50)} + {_ms(mp50)}",
                _ratio(floor, tp50),
            )
        )
        out.append(
            Row(
                "  join overhead beyond those handshakes p50",
                _ms(jp50 - floor),
                f"3 handshakes {_ms(floor)}",
                _ratio(jp50, floor),
                "<= 3 ms",
                _verdict(jp50 - floor <= 3),
            )
        )
        out.append(Row(f"  (b) KDF, {r['kdf']['params']} p50", _ms(r["kdf_ms"])))
        out.append(
            Row(
                "  join + KDF p50 (what a joiner pays)",
                _ms(jp50 + r["kdf_ms"]),
            )
        )
        out.append(Row("  control CPU per serial join", _ms(ov["control_cpu_ms_per_join"])))
        cr = r.get("crypto")
        if cr:
            out.append(
                Row(
                    "  SPAKE2 CPU p50, control side / joiner side",
                    f"{_ms(cr['spake2_control_side']['p50_ms'])} / "
                    f"{_ms(cr['spake2_joiner_side']['p50_ms'])}",
                    "microstackd.trust.pake (libsodium)",
                )
            )
        tmpfs = r.get("overhead_tmpfs")
        if tmpfs:
            out.append(
                Row(
                    "  diagnostic: join p50 with the control's state on tmpfs",
                    _ms(tmpfs["seconds"]["p50_ms"]),
                    f"disk {_ms(jp50)}",
                    _ratio(tmpfs["seconds"]["p50_ms"], jp50),
                )
            )
    for s in r.get("scale", []):
        n = s["nodes"]
        target = n == SCALE_TARGET_N
        out.append(
            Row(
                f"scale N={n}: total time",
                f"{s['seconds']:.1f} s",
                f"{s['seconds'] / n * 1000:.1f} ms/join",
                "",
                "< 60 s" if target else "",
                _verdict(s["seconds"] < 60) if target else "",
            )
        )
        out.append(
            Row(f"  N={n}: join p50 / p99", f"{_ms(s['join_p50_ms'])} / {_ms(s['join_p99_ms'])}")
        )
        out.append(
            Row(
                f"  N={n}: control CPU per join",
                _ms(s["control_cpu_ms_per_join"]),
                f"{s['control_cpu_s']:.1f} s total; load generators {s['workers_cpu_s']:.1f} s",
            )
        )
        out.append(
            Row(
                f"  N={n}: control peak RSS (VmHWM)",
                f"{s['control_rss_mb']:.0f} MB",
                "",
                "",
                "< 1 GB" if target else "",
                _verdict(s["control_rss_mb"] < 1024) if target else "",
            )
        )
        out.append(
            Row(
                f"  N={n}: errors",
                str(s["errors"]),
                f"bootstraps tried again {s.get('retries', 0)} ({s.get('busy_refusals', 0)} "
                "refused as busy)",
                "",
                "0",
                _verdict(s["errors"] == 0),
            )
        )
        hb = s.get("heartbeats")
        if hb:
            out.append(
                Row(
                    f"  N={n}: heartbeats of {hb['members']} members, control CPU",
                    f"{hb['control_cpu_pct_of_one_core']:.1f} % of a core",
                    f"{hb['control_cpu_us_per_beat']:.0f} us/beat, every {hb['interval_s']:.0f} s;"
                    f" RSS {hb['control_rss_mb']:.0f} MB; errors {hb['errors']}"
                    + (
                        f"; {hb['members_active']} shown active after"
                        if "members_active" in hb
                        else ""
                    )
                    + (
                        f"; {hb['session_calls_retried']} session calls again"
                        if hb.get("session_calls_retried")
                        else ""
                    ),
                    "",
                    "< 10 %" if target else "",
                    _verdict(
                        hb["control_cpu_pct_of_one_core"] < 10
                        and hb["errors"] == 0
                        and hb.get("members_active", hb["members"]) == hb["members"]
                    )
                    if target
                    else "",
                )
            )
        st = s.get("status")
        if st:
            nodes = st["rpc"]["nodes"]
            out.append(
                Row(
                    f"  N={n}: status RPC p99, {nodes} nodes (socket)",
                    _ms(st["rpc"]["p99_ms"]),
                    f"p50 {_ms(st['rpc']['p50_ms'])}",
                    "",
                    "< 100 ms" if target else "",
                    _verdict(st["rpc"]["p99_ms"] < 100) if target else "",
                )
            )
            table, as_json = st["cli"]["p50_ms"], st["cli_json"]["p50_ms"]
            judged = nodes == 1001  # the CLI targets are for a 1,001-node status
            out.append(
                Row(
                    f"  N={n}: `microstackctl status` p50, table / JSON",
                    f"{_ms(table)} / {_ms(as_json)}",
                    f"min {_ms(st['cli']['min_ms'])} / {_ms(st['cli_json']['min_ms'])}",
                    "",
                    "< 250 / < 150 ms" if judged else "",
                    _verdict(table < 250 and as_json < 150) if judged else "",
                )
            )
    for g in r.get("scale_growth", []):
        if "exponent_vs_previous" in g:
            out.append(
                Row(
                    f"  growth to N={g['nodes']}: time ~ N^k",
                    f"k = {g['exponent_vs_previous']:.2f}",
                    f"{g['ms_per_join']:.1f} ms/join",
                )
            )
    st_fs = r.get("scale_tmpfs")
    if st_fs:
        n = st_fs["nodes"]
        disk = next((s for s in r.get("scale", []) if s["nodes"] == n), None)
        out.append(
            Row(
                f"  diagnostic: N={n} with the control's state on tmpfs",
                f"{st_fs['seconds']:.1f} s, {st_fs['errors']} errors",
                f"disk {disk['seconds']:.1f} s, {disk['errors']} errors" if disk else "",
                _ratio(st_fs["seconds"], disk["seconds"]) if disk else "",
            )
        )
    if r.get("scale") and max(s["nodes"] for s in r["scale"]) < SCALE_TARGET_N:
        out.append(Row(f"scale N={SCALE_TARGET_N}", "not run", "", "", "< 60 s, < 1 GB", "n/a"))
    st = r.get("status_at_scale")
    if st and "status" not in r["scale"][-1]:  # results of an older bench
        out.append(
            Row(
                f"status RPC p99, {st['rpc']['nodes']} nodes (socket)",
                _ms(st["rpc"]["p99_ms"]),
                f"p50 {_ms(st['rpc']['p50_ms'])}",
                "",
                "< 100 ms",
                _verdict(st["rpc"]["p99_ms"] < 100),
            )
        )
        table, as_json = st["cli"]["p50_ms"], st.get("cli_json", {}).get("p50_ms", math.nan)
        nodes = st["rpc"]["nodes"]
        judged = nodes >= 1001  # the targets are for a 1,001-node status (--quick has 101)
        out.append(
            Row(
                f"`microstackctl status`, {nodes} nodes p50 (table)",
                _ms(table),
                _range(st["cli"]),
                "",
                "< 250 ms" if judged else "",
                _verdict(table < 250) if judged else "",
            )
        )
        out.append(
            Row(
                f"`microstackctl status --format json`, {nodes} nodes p50",
                _ms(as_json),
                _range(st.get("cli_json", {})),
                "",
                "< 150 ms" if judged else "",
                _verdict(as_json < 150) if judged else "",
            )
        )
    if st:
        gcs = st["member"]["get_cluster_status"]
        out.append(
            Row(
                f"  GetClusterStatus over mTLS, {gcs['nodes']} nodes p50 / p99",
                f"{_ms(gcs['p50_ms'])} / {_ms(gcs['p99_ms'])}",
            )
        )
    cli = r.get("cli", {})
    if cli:
        out.append(
            Row(
                "event latency p50, control record -> CLI display",
                _ms(r["event_latency_p50_ms"]),
                f"p99 {_ms(cli['event_latency']['p99_ms'])}",
                "",
                "< 50 ms",
                _verdict(r["event_latency_p50_ms"] < 50),
            )
        )
    hs = r.get("streams")
    w = r.get("watch")
    if w:
        out.append(
            Row(
                f"Watch streams held by the control, {st['rpc']['nodes'] if st else '?'} nodes",
                f"{w['held']} held, RSS {w['control_rss_holding_mb']:.0f} MB",
                f"before {w['control_rss_before_mb']:.0f} MB",
                f"{w['control_rss_per_stream_kb']:.0f} KB/stream",
                "",
                f"errors {w['errors']}",
            )
        )
        fo = w["fan_out_latency"]
        out.append(
            Row(
                f"  one event to all {w['delivered']} watchers, p50 / p99",
                f"{_ms(fo['p50_ms'])} / {_ms(fo['p99_ms'])}",
            )
        )
    elif st:
        out.append(Row("Watch streams", "not measured", "", "", "", "skipped"))
    if st:
        ae = st["member"]["enrol_of_active_node"]
        out.append(
            Row(
                "  Enrol of an already-active node",
                f"ends at once: {ae['events']} event in {_ms(ae['ms'])}",
                "not a held stream",
            )
        )
    if hs:
        out.append(
            Row(
                "  Enrol streams held open at configure-node (mTLS)",
                f"{hs['held']} held, RSS {hs['control_rss_holding_mb']:.0f} MB",
                f"before {hs['control_rss_bootstrapped_mb']:.0f} MB",
                f"{hs['control_rss_per_stream_kb']:.0f} KB/stream",
                "",
                f"errors {hs['errors']}",
            )
        )
    lxd = r.get("lxd")
    lxd_join = lxd["lxd_token"]["p50_ms"] if lxd else math.nan
    lxd_ref = f"LXD token {_ms(lxd_join)}" if lxd else "LXD: --parts lxd"
    if cli:
        jp = r["cli_join_p50_ms"]
        ns = cli["join_no_services_derived"]["p50_ms"]
        # The join targets are judged beside LXD, in the lxd part's rounds.
        out.append(
            Row(
                f"`microstackctl join` (password) p50, with services "
                f"({cli['join_table_format']['n']})",
                _ms(jp),
                lxd_ref,
                _ratio(jp, lxd_join),
            )
        )
        out.append(Row("  same, minus configure-node (no services, derived)", _ms(ns)))
        tok = cli.get("token")
        if isinstance(tok, dict):
            tp = tok["join"]["p50_ms"]
            tn = tok["join_no_services_derived"]["p50_ms"]
            out.append(
                Row(
                    f"`microstackctl join --token` p50, with services ({tok['join']['n']})",
                    _ms(tp),
                    lxd_ref,
                    _ratio(tp, lxd_join),
                )
            )
            out.append(Row("  same, minus configure-node (no services, derived)", _ms(tn)))
            out.append(Row("  `microstackctl add-node` p50", _ms(tok["add_node"]["p50_ms"])))
        else:
            out.append(Row("  token join", str(tok or "n/a: not implemented")))
        sp = r["cli_status_p50_ms"]
        lxd_list = lxd["lxc_cluster_list"]["p50_ms"] if lxd else math.nan
        out.append(
            Row(
                "`microstackctl status` p50, 3 nodes",
                _ms(sp),
                f"lxc cluster list {_ms(lxd_list)}"
                if lxd
                else _range(cli["status_3_nodes"]["control_socket"]),
                _ratio(sp, lxd_list),
                "< 100 ms",
                _verdict(sp < 100),
            )
        )
        out.append(
            Row(
                "  `microstackctl status` on a compute (relayed) p50",
                _ms(cli["status_3_nodes"]["compute_socket"]["p50_ms"]),
            )
        )
        out.append(
            Row(
                "  Status RPC itself, 3 nodes p50",
                _ms(cli["status_3_nodes"]["rpc"]["p50_ms"]),
            )
        )
    if lxd:
        out.extend(_lxd_rows(lxd))
    if "cloud" in r:
        out.extend(_cloud_rows(r["cloud"]["summary"]))
    floor = r.get("cli_floor")
    if floor:
        python = f"python -c pass {_ms(floor['python_startup']['p50_ms'])}"
        for what, key in (("--version", "microstackctl_version"), ("--help", "microstackctl_help")):
            if key in floor:
                p = floor[key]["p50_ms"]
                out.append(
                    Row(
                        f"`microstackctl {what}` p50",
                        _ms(p),
                        python,
                        "",
                        "< 60 ms",
                        _verdict(p < 60),
                    )
                )
    imp = r.get("import_time")
    if imp:
        for command, figures in imp.get("commands", {}).items():
            heavy = ", ".join(
                f"{d['package']} {d['inclusive_ms']:.0f}" for d in figures["by_package"][:5]
            )
            out.append(
                Row(f"  imports of `microstackctl {command}`", _ms(figures["total_ms"]), heavy)
            )
    if cli:
        for who, key in (("control", "control"), ("compute (daemon only)", "compute")):
            rss = cli[f"{key}_idle_rss_mb"]
            out.append(
                Row(
                    f"idle RSS, {who}",
                    f"{rss:.1f} MB",
                    _split(cli.get(f"{key}_idle_rss_split_mb", {})),
                    "",
                    f"<= {IDLE_RSS_TARGET_MB} MB",
                    _verdict(rss <= IDLE_RSS_TARGET_MB),
                )
            )
        out.append(Row("start-up to ready, control (fresh)", _ms(cli["control_ready_fresh_ms"])))
        out.append(
            Row("start-up to ready, control (initialised)", _ms(cli["control_ready_restart_ms"]))
        )
        out.append(
            Row("start-up to ready, compute (fresh) p50", _ms(cli["compute_ready_fresh_ms"]))
        )
    fp = r.get("footprint")
    if fp:
        for label, key in (
            ("control after init", "control_after_init"),
            ("control restarted", "control_restarted"),
            ("compute after join", "compute_after_join"),
            ("compute restarted", "compute_restarted"),
        ):
            m = fp[key]
            out.append(
                Row(
                    f"footprint: {label}, idle",
                    f"RSS {m['rss']:.1f} MB, PSS {m['pss']:.1f} MB",
                    _split(m),
                    "",
                    f"<= {IDLE_RSS_TARGET_MB} MB RSS",
                    _verdict(m["rss"] <= IDLE_RSS_TARGET_MB),
                )
            )
        for who, key in (("a control's", "control_imports"), ("a compute's", "compute_imports")):
            imports = fp.get(key)
            if not imports:
                continue
            top = ", ".join(f"{p['package']} {p['rss_mb']:.1f}" for p in imports["packages"][:6])
            out.append(
                Row(
                    f"  {who} imports, replayed (RSS MB)",
                    f"{imports['after_imports_mb']['VmRSS']:.1f} MB",
                    f"interpreter {imports['interpreter_mb']['VmRSS']:.1f}; {top}",
                )
            )
    return out


def growth_table(r: dict[str, Any]) -> str:
    """How the scale figures grow with N, as Markdown (docs/performance.md)."""
    lines = [
        "| N | enrol at once | control CPU / join | join p99 | peak RSS | errors "
        "| heartbeats: control CPU | status RPC p99 | `status` table / JSON |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r.get("scale", []):
        hb, st = s.get("heartbeats"), s.get("status")
        lines.append(
            f"| {s['nodes']:,} | {s['seconds']:.1f} s | {s['control_cpu_ms_per_join']:.1f} ms "
            f"| {s['join_p99_ms'] / 1000:.1f} s | {s['control_rss_mb']:.0f} MB | {s['errors']} "
            + (
                f"| {hb['control_cpu_pct_of_one_core']:.1f} % ({hb['control_cpu_us_per_beat']:.0f}"
                " us/beat) "
                if hb
                else "| "
            )
            + (
                f"| {st['rpc']['p99_ms']:.1f} ms | {st['cli']['p50_ms']:.0f} / "
                f"{st['cli_json']['p50_ms']:.0f} ms |"
                if st
                else "| | |"
            )
        )
    return "\n".join(lines)


def table(r: dict[str, Any]) -> str:
    header = Row("figure", "measured", "reference", "ratio", "target", "verdict")
    body = rows(r)
    cols = list(
        zip(
            *[
                (x.what, x.figure, x.reference, x.ratio, x.target, x.verdict)
                for x in [header, *body]
            ],
            strict=True,
        )
    )
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for i, row in enumerate([header, *body]):
        cells = (row.what, row.figure, row.reference, row.ratio, row.target, row.verdict)
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    body = rows(r)
    lines = [
        "| figure | measured | reference | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for x in body:
        what = "↳ " + x.what.strip() if x.what.startswith("  ") else x.what
        cells = [what, x.figure, x.reference, x.ratio, x.target, x.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Render a results file written by run.py as a Markdown table (for docs)."""
    import json
    import sys
    from pathlib import Path

    results = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(results))
    if results.get("scale"):
        print("\n" + growth_table(results))


if __name__ == "__main__":
    main()
