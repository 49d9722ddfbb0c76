"""The summary (floors, ratios, targets) and the BENCHMARKS.md section of bench_spilling.py,
computed from the recorded JSON only, so a partial run renders and `--from-json` re-renders.

Every number is labelled: *measured* (timed on the machine), *derived* (arithmetic on measured
numbers: the host-optimizer bound = bytes / measured bandwidth; a variant's link time = its
measured byte counters / the measured link rates).
"""

from __future__ import annotations

from typing import Any, Optional

TARGETS = {"vs_deepspeed": 1.5, "vs_fsdp2": 1.2, "over_floor": 1.25, "sharp": 1.3}


def _ok(r: Any) -> bool:
    return isinstance(r, dict) and r.get("status") == "ok"


def _t(r: Any) -> Optional[float]:
    return r.get("step_time_s") if _ok(r) else None


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Floors per spilling variant, the best variant, the baselines' ratios and the targets."""
    res = report.get("results", {})
    bw = (res.get("host_bandwidth") or {}).get("triad_gb_s")
    sp = res.get("spilling") or {}
    comp, xfer = _t(sp.get("compute")), sp.get("transfer") if _ok(sp.get("transfer")) else None
    rows = {}
    for name, v in (sp.get("variants") or {}).items():
        if not _ok(v):
            rows[name] = {"status": v.get("status"), "reason": v.get("reason")}
            continue
        row: dict[str, Any] = {"status": "ok", "step_time_s": v["step_time_s"]}
        if bw:
            row["host_optimizer_bound_s"] = v["host_bytes_per_step"] / (bw * 1e9)
        if xfer:
            row["link_s"] = (v["gb_in_per_step"] * 2**30 / (xfer["h2d_gb_s"] * 1e9)
                             + v["gb_out_per_step"] * 2**30 / (xfer["d2h_gb_s"] * 1e9))
        parts = {"compute": comp, "link": row.get("link_s"),
                 "host optimizer": row.get("host_optimizer_bound_s")}
        known = {k: x for k, x in parts.items() if x}
        if known:
            limit = max(known, key=lambda k: known[k])
            row.update(floor_s=known[limit], floor_is=limit,
                       over_floor=v["step_time_s"] / known[limit],
                       floor_complete=len(known) == 3)
        alone = (v.get("host_optimizer_alone") or {}).get("s_per_step")
        if alone:
            row["host_optimizer_alone_s"] = alone
            row["host_optimizer_gb_s"] = v["host_bytes_per_step"] / alone / 1e9
        rows[name] = row
    ok_rows = {k: r for k, r in rows.items() if r.get("status") == "ok"}
    best = min(ok_rows, key=lambda k: ok_rows[k]["step_time_s"]) if ok_rows else None
    out: dict[str, Any] = {"variants": rows, "best_variant": best}
    targets: dict[str, Any] = {}
    if best:
        tb = ok_rows[best]["step_time_s"]
        for key, name in (("vs_deepspeed", "deepspeed"), ("vs_fsdp2", "fsdp2"),
                          ("vs_fairscale", "fairscale")):
            r = (res.get(name) or {}).get("result")
            t = _t(r)
            if t:
                targets[key] = {"value": round(t / tb, 3), "target": TARGETS.get(key),
                                "ok": t / tb >= TARGETS[key] if key in TARGETS else None}
            elif r or res.get(name):
                st = r or res.get(name) or {}
                targets[key] = {"value": None, "target": TARGETS.get(key),
                                "status": st.get("status"), "reason": st.get("reason")}
        knob_rows = {k: r for k, r in ok_rows.items() if k != "fp32-state" and "over_floor" in r}
        if knob_rows:
            kb = min(knob_rows, key=lambda k: knob_rows[k]["over_floor"])
            targets["over_floor"] = {"value": round(knob_rows[kb]["over_floor"], 3),
                                     "variant": kb, "floor_is": knob_rows[kb]["floor_is"],
                                     "target": TARGETS["over_floor"],
                                     "ok": knob_rows[kb]["over_floor"] <= TARGETS["over_floor"]}
    sh = res.get("sharp") or {}
    if _ok(sh.get("sharp")):
        x = sh["sharp"]["speedup_vs_sequential"]
        targets["sharp"] = {"value": round(x, 3), "target": TARGETS["sharp"],
                            "ok": x >= TARGETS["sharp"], "models": len(sh.get("solo") or {})}
    out["targets"] = targets
    return out


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _status(r: Any) -> str:
    if not isinstance(r, dict):
        return "not run"
    st = r.get("status", "?")
    reason = (r.get("reason") or "").replace("|", "/").replace("\n", " ")
    return f"{st}: {reason[:160]}" if reason else st


def markdown(report: dict[str, Any]) -> str:
    c, res = report.get("config", {}), report.get("results", {})
    s = report.get("summary") or summarize(report)
    sp = res.get("spilling") or {}
    lines = [f"{c.get('model')} {c.get('overrides') or ''} "
             f"({_f((sp.get('params') or 0) / 1e9, 2)} B parameters), batch {c.get('batch_size')} x "
             f"seq {c.get('seq_len')}, {c.get('precision')}, AdamW; GPU memory capped at "
             f"{c.get('cap_gb')} GB per process; median of {c.get('steps')} steps after "
             f"{c.get('warmup')} warm-up; each measurement in its own process "
             f"(logs: `benchmarks/spilling-logs/`). Whole run {report.get('total_wall_s', '-')} s.",
             ""]
    bw = res.get("host_bandwidth") or {}
    if _ok(bw):
        lines += [f"Host memory bandwidth (measured, STREAM triad with torch on "
                  f"{bw['threads']} threads): **{bw['triad_gb_s']:.1f} GB/s** (copy "
                  f"{bw['copy_gb_s']:.1f} GB/s).", ""]
    lines += ["| spilling variant | s/step (measured) | peak GPU GiB | shards (on GPU) | host "
              "optimizer alone s (GB/s) | host bytes/step GB | host-opt bound s (derived) | "
              "link s (derived) | floor = max(compute, link, host opt) | spilling / floor |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in (sp.get("variants") or {}).items():
        r = s["variants"].get(name, {})
        if not _ok(v):
            lines.append(f"| {name} | {_status(v)} | | | | | | | | |")
            continue
        alone = r.get("host_optimizer_alone_s")
        lines.append(
            f"| {name} `{v.get('knobs')}` | {v['step_time_s']:.3f} | {_f(v.get('peak_gpu_gb'), 2)} "
            f"| {v.get('shards')} ({len(v.get('device_shards') or [])}) | "
            f"{_f(alone)} ({_f(r.get('host_optimizer_gb_s'), 1)}) | "
            f"{v['host_bytes_per_step'] / 1e9:.1f} | {_f(r.get('host_optimizer_bound_s'))} | "
            f"{_f(r.get('link_s'))} | {_f(r.get('floor_s'))} ({r.get('floor_is', '-')}) | "
            f"{_f(r.get('over_floor'), 2)} |")
    comp, xfer = sp.get("compute"), sp.get("transfer")
    lines += ["", f"Compute bound (measured; first variant's shards all resident, no transfers, "
                  f"no optimizer, uncapped): {_f(_t(comp)) if _ok(comp) else _status(comp)} s/step. "
                  + (f"Transfer bound (measured, serial, pinned): {xfer['step_time_s']:.3f} s "
                     f"({xfer['gb_in']:.2f} GiB in at {xfer['h2d_gb_s']:.1f} GB/s, "
                     f"{xfer['gb_out']:.2f} GiB out at {xfer['d2h_gb_s']:.1f} GB/s)."
                     if _ok(xfer) else f"Transfer bound: {_status(xfer)}."), ""]
    lines += ["| what a user would pick instead | s/step (measured) | peak GPU GiB | spilling "
              "(best variant) speed-up | notes |", "|---|---|---|---|---|"]
    best = s.get("best_variant")
    tb = s["variants"][best]["step_time_s"] if best else None
    labels = {"deepspeed": "DeepSpeed ZeRO-3, params + optimizer offloaded (DeepSpeedCPUAdam)",
              "fsdp2": "FSDP2, CPUOffloadPolicy (Saturn's fsdp builder)",
              "fairscale": "fairscale OffloadModel"}
    for name, label in labels.items():
        w = res.get(name)
        r = (w or {}).get("result") if isinstance(w, dict) and "result" in w else w
        if _ok(r):
            note = r.get("cap_set") or r.get("optimizer") or ""
            lines.append(f"| {label} | {r['step_time_s']:.3f} | {_f(r.get('peak_gpu_gb'), 2)} | "
                         f"{_f(r['step_time_s'] / tb, 2) if tb else '-'}x | {note} |")
        else:
            lines.append(f"| {label} | {_status(r)} | | | |")
    sh = res.get("sharp") or {}
    if sh:
        lines += ["", f"SHARP ({len(sh.get('solo') or {})} x {c.get('model')} "
                      f"{c.get('sharp_overrides')}, batch {c.get('sharp_batch_size')}, "
                      f"{c.get('sharp_steps')} steps each, knobs {sh.get('knobs')}): "]
        seq, g = sh.get("sequential"), sh.get("sharp")
        if seq and _ok(g):
            lines[-1] += (f"sequential {seq['wall_s']:.2f} s, SHARP {g['wall_s']:.2f} s "
                          f"(measured wall clock): **{g['speedup_vs_sequential']:.2f}x**, idle "
                          f"fraction {g['idle_fraction']:.3f}, max loss diff vs solo "
                          f"{g['max_abs_loss_diff_vs_solo']:.1e}.")
        else:
            lines[-1] += f"{_status(g if g else sh)}."
    lines += ["", "Targets:", ""]
    tg = s.get("targets", {})
    names = {"vs_deepspeed": "spilling / DeepSpeed ZeRO-3 offload throughput",
             "vs_fsdp2": "spilling / FSDP2 CPU offload throughput",
             "vs_fairscale": "spilling / fairscale OffloadModel throughput",
             "over_floor": "spilling with the new knobs / max(compute, link, host optimizer)",
             "sharp": "SHARP / sequential spilled runs"}
    for key, label in names.items():
        t = tg.get(key)
        if not t:
            continue
        op = "<=" if key == "over_floor" else ">="
        if t.get("value") is None:
            lines.append(f"- {label}: not measured ({t.get('status')}: {t.get('reason')})")
            continue
        verdict = "" if t.get("ok") is None else (" — **met**" if t["ok"] else " — **missed**")
        extra = (f" ({t['variant']}; limited by {t['floor_is']})" if key == "over_floor" else "")
        tgt = f" (target {op} {t['target']})" if t.get("target") else ""
        lines.append(f"- {label}: {t['value']}{extra}{tgt}{verdict}")
    return "\n".join(lines) + "\n"
