"""Jacobian engine benchmark: mean Jacobian + JNE of a 2-layer ReLU encoder, four ways.

    python benchmarks/jacobian.py --size small --json small.json
    python benchmarks/jacobian.py --size nsd --json nsd.json        # long; run in background

(a) unit loop   one forward pass with the graph retained, then per unit v
                torch.autograd.grad(Y[:, v].sum(), X, retain_graph=True) (the JNE authors' way)
(b) torch.func  the faster of vmapped jacfwd / jacrev, in sample chunks, then mean and L1
(c) engine      linbridge.jacobian: weighted_mean_jacobian + deviation_statistics(stats=l1)
(d) GEMM floor  plain dense matmuls with the FLOP count of the dense per-sample product,
                N*V*H*D multiply-adds (one (V x H) @ (H x D) GEMM per sample)

All four run in this process, interleaved in rounds on the same model and inputs; each
method's time is the minimum over rounds (the machine may be shared: the minimum is the
least disturbed run, and ratios come from the same run). Where a method runs on a subset
(of units for (a), of samples for (b), (c), (d)), its time is extrapolated linearly to the
full problem and the output says so. The engine's peak RSS is measured in a subprocess
that runs only the engine (resource.getrusage(RUSAGE_SELF).ru_maxrss of that child).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

SIZES = {
    #        N     D    H      V     subsets per round: units (a), samples (b), (c), (d)
    "small": dict(N=100, D=768, H=1024, V=4000, a_units=None, b_samples=None, c_samples=None,
                  d_samples=None, rounds=3),
    "nsd": dict(N=1000, D=768, H=1024, V=15724, a_units=48, b_samples=16, c_samples=100,
                d_samples=50, rounds=3),
    "tiny": dict(N=24, D=64, H=96, V=300, a_units=None, b_samples=None, c_samples=None,
                 d_samples=None, rounds=2),  # smoke test of the script itself
}


def build(cfg: dict, seed: int = 0, device="cpu"):
    from linbridge.encoders import build_mlp

    torch.manual_seed(seed)
    model = build_mlp(cfg["D"], cfg["V"], hidden=cfg["H"], depth=1, activation="relu",
                      bias=False).eval().to(device)
    X = torch.randn(cfg["N"], cfg["D"], generator=torch.Generator().manual_seed(seed + 1))
    return model, X.to(device)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- the four methods ------------------------------------------------------------------------

def unit_loop(model, X, units):
    """(a) per-unit autograd through a retained graph: returns Jbar[units], JNE[units]."""
    Xg = X.detach().clone().requires_grad_(True)
    Y = model(Xg)
    Jbar = torch.empty(len(units), X.shape[1], dtype=torch.float64, device=X.device)
    jne = torch.empty(len(units), dtype=torch.float64, device=X.device)
    for i, v in enumerate(units):
        g = torch.autograd.grad(Y[:, v].sum(), Xg, retain_graph=True)[0]  # (N, D) = J[:, v, :]
        m = g.mean(0)
        s = (g - m).abs().sum(1)
        Jbar[i] = m
        jne[i] = s.std(unbiased=False)
    return Jbar, jne


def torchfunc(model, X, mode, chunk):
    """(b) vmapped jacfwd/jacrev in sample chunks (all chunks kept), then mean and JNE."""
    from torch.func import functional_call, jacfwd, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(x):
        return functional_call(model, params, (x.unsqueeze(0),))[0]

    jac = vmap(jacfwd(f) if mode == "jacfwd" else jacrev(f))
    blocks = [jac(X[s:s + chunk]) for s in range(0, X.shape[0], chunk)]
    Jbar = torch.zeros(blocks[0].shape[1:], dtype=torch.float64, device=X.device)
    for b in blocks:
        Jbar += b.sum(0, dtype=torch.float64)
    Jbar /= X.shape[0]
    J32 = Jbar.float()
    s = torch.cat([(b - J32).abs_().sum(-1) for b in blocks])  # (N, V)
    return Jbar, s.double().std(0, unbiased=False)


def engine(model, X, budget_mb, device="cpu"):
    """(c) linbridge's engine: returns Jbar (V, D), JNE (V,) as numpy float64."""
    from linbridge.jacobian import ModelJacobianSource, deviation_statistics, weighted_mean_jacobian

    src = ModelJacobianSource(model, X, memory_budget_mb=budget_mb, device=device)
    Jbar = weighted_mean_jacobian(src)
    st = deviation_statistics(src, {"mean": Jbar}, stats=("l1",))
    return Jbar, st.jne("mean")


def engine_deviation_only(model, X, Jbar, budget_mb, device="cpu"):
    from linbridge.jacobian import ModelJacobianSource, deviation_statistics

    src = ModelJacobianSource(model, X, memory_budget_mb=budget_mb, device=device)
    return deviation_statistics(src, {"mean": Jbar}, stats=("l1",))


def gemm_floor(model, n):
    """(d) n dense (V x H) @ (H x D) GEMMs: N*V*H*D multiply-adds for n = N."""
    W2, W1 = model[2].weight.detach(), model[0].weight.detach()
    out = torch.empty(W2.shape[0], W1.shape[1], dtype=W2.dtype, device=W2.device)
    for _ in range(n):
        torch.mm(W2, W1, out=out)
    return out


# -- engine in its own process (peak RSS) ----------------------------------------------------

def engine_child(args) -> None:
    cfg = dict(SIZES[args.size])
    if args.n_samples:
        cfg["N"] = args.n_samples
    torch.set_num_threads(args.threads)
    model, X = build(cfg, device=args.device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    Jbar, jne = engine(model, X, args.budget_mb, args.device)
    _sync(args.device)
    t = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = {"vm_hwm_mb": _vm_hwm_mb()}
    if torch.device(args.device).type == "cuda":
        extra["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps({**extra, "N": cfg["N"], "seconds": t, "peak_rss_mb": rss,
                      "rss_before_engine_mb": rss0,
                      "results_mb": cfg["N"] * cfg["V"] * 8 / 2 ** 20,
                      "mean_jacobian_mb": cfg["V"] * cfg["D"] * 8 / 2 ** 20,
                      "jne_checksum": float(np.nansum(jne))}))


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process image (Linux /proc), not inherited across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(args, budget_mb: float, n_samples: int | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--engine-child", "--size", args.size,
           "--budget-mb", str(budget_mb), "--threads", str(args.threads), "--device", args.device]
    if n_samples:
        cmd += ["--n-samples", str(n_samples)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------

def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    res = fn()
    _sync(device)
    return time.perf_counter() - t0, res


def _maxdiff(a, b) -> dict:
    a = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    d = float(np.abs(a - b).max())
    return {"max_abs_diff": d, "max_abs_value": float(np.abs(b).max()),
            "max_rel_diff": d / max(float(np.abs(b).max()), 1e-300)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--budget-mb", type=float, default=1024.0)
    ap.add_argument("--rss-budgets", type=float, nargs="*", default=None,
                    help="budgets for the peak-RSS subprocess runs (default: --budget-mb)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-samples", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.engine_child:
        engine_child(args)
        return {}
    torch.set_num_threads(args.threads)
    cfg = SIZES[args.size]
    N, D, H, V = cfg["N"], cfg["D"], cfg["H"], cfg["V"]
    dev = args.device
    rounds = args.rounds or cfg["rounds"]
    model, X = build(cfg, device=dev)
    log = lambda *a: print(*a, flush=True, file=sys.stderr)  # noqa: E731
    load0 = os.getloadavg()
    log(f"size {args.size}: N={N} D={D} H={H} V={V}; threads {args.threads}; device {dev}; "
        f"full tensor {N * V * D * 4 / 2 ** 30:.1f} GiB; load average {load0[0]:.2f}")
    with torch.no_grad():
        active = float((model[1](model[0](X)) > 0).float().mean())

    # workloads (subsets where the size says so)
    a_units = np.arange(V) if cfg["a_units"] is None else \
        np.random.default_rng(0).choice(V, cfg["a_units"], replace=False)
    nb = cfg["b_samples"] or N
    nc = cfg["c_samples"] or N
    nd = cfg["d_samples"] or N
    chunk_b = max(1, min(nb, int(512 * 2 ** 20 // (V * D * 4))))

    # peak RSS of the engine alone, in child processes started while this process is still
    # small: ru_maxrss survives fork + exec, so a child of a large parent would report the
    # parent's size (VmHWM, read in the child, is the child image's own peak)
    rss = []
    if not args.skip_rss:
        for b in args.rss_budgets or [args.budget_mb]:
            for n in sorted({max(1, N // 4), N}):
                log(f"engine subprocess: budget {b:g} MB, N={n} ...")
                rec = run_child(args, b, n)
                rec["budget_mb"] = b
                rss.append(rec)
                log(f"  peak RSS {rec['peak_rss_mb']:.0f} MB (VmHWM {rec['vm_hwm_mb']:.0f} MB; "
                    f"{rec['rss_before_engine_mb']:.0f} MB before the engine), {rec['seconds']:.1f}s")

    # torch.func: the faster of jacfwd and jacrev, on a small calibration chunk
    cal = X[:min(4, N)]
    t_fwd, _ = timed(lambda: torchfunc(model, cal, "jacfwd", len(cal)), dev)
    t_fwd, _ = timed(lambda: torchfunc(model, cal, "jacfwd", len(cal)), dev)
    t_rev, _ = timed(lambda: torchfunc(model, cal, "jacrev", len(cal)), dev)
    mode_b = "jacfwd" if t_fwd <= t_rev else "jacrev"
    log(f"torch.func calibration on {len(cal)} samples: jacfwd {t_fwd:.2f}s, jacrev {t_rev:.2f}s "
        f"-> {mode_b}")

    # the engine's mean Jacobian (all samples) once, timed in every round as part of (c)
    times = {k: [] for k in ("a", "b", "c", "c_mean", "d")}
    res = {}
    for r in range(rounds):
        t, res["a"] = timed(lambda: unit_loop(model, X, a_units), dev)
        times["a"].append(t)
        t, res["b"] = timed(lambda: torchfunc(model, X[:nb], mode_b, chunk_b), dev)
        times["b"].append(t)
        if nc == N:
            t, res["c"] = timed(lambda: engine(model, X, args.budget_mb, dev), dev)
            times["c"].append(t)
        else:
            from linbridge.jacobian import ModelJacobianSource, weighted_mean_jacobian

            t_m, Jbar_full = timed(lambda: weighted_mean_jacobian(
                ModelJacobianSource(model, X, memory_budget_mb=args.budget_mb, device=dev)), dev)
            t, _ = timed(lambda: engine_deviation_only(model, X[:nc], Jbar_full, args.budget_mb,
                                                       dev), dev)
            times["c_mean"].append(t_m)
            times["c"].append(t)
            res["c_mean"] = Jbar_full
        t, _ = timed(lambda: gemm_floor(model, nd), dev)
        times["d"].append(t)
        mean_note = "" if nc == N else f" + mean {times['c_mean'][-1]:.2f}s"
        log(f"round {r + 1}/{rounds}: a {times['a'][-1]:.2f}s ({len(a_units)} units)  "
            f"b {times['b'][-1]:.2f}s ({nb} samples)  c {times['c'][-1]:.2f}s ({nc} samples"
            f"{mean_note})  d {times['d'][-1]:.2f}s ({nd} samples)")

    def engine_full(r: int) -> float:
        """The engine's full-problem time in round r (mean pass + extrapolated deviations)."""
        return times["c"][r] if nc == N else times["c_mean"][r] + times["c"][r] * N / nc

    best = {k: min(v) for k, v in times.items() if v}
    full = {"a": best["a"] * V / len(a_units), "b": best["b"] * N / nb,
            "c": best["c"] if nc == N else best["c_mean"] + best["c"] * N / nc,
            "d": best["d"] * N / nd}
    extrap = {"a": len(a_units) < V, "b": nb < N, "c": nc < N, "d": nd < N}

    # correctness: engine vs (a) on (a)'s units, vs (b) on (b)'s samples
    t_full_engine = None
    if nc == N:
        Jbar_c, jne_c = res["c"]
    else:
        log("full engine run (all samples, in process)...")
        t_full_engine, (Jbar_c, jne_c) = timed(lambda: engine(model, X, args.budget_mb, dev), dev)
    diffs = {"mean_jacobian_engine_vs_unit_loop": _maxdiff(Jbar_c[a_units], res["a"][0]),
             "jne_engine_vs_unit_loop": _maxdiff(jne_c[a_units], res["a"][1])}
    if nb == N:
        Jbar_cb, jne_cb = Jbar_c, jne_c
    else:
        Jbar_cb, jne_cb = engine(model, X[:nb], args.budget_mb, dev)
    diffs["mean_jacobian_engine_vs_torchfunc"] = _maxdiff(Jbar_cb, res["b"][0])
    diffs["jne_engine_vs_torchfunc"] = _maxdiff(jne_cb, res["b"][1])

    out = {
        "size": args.size, "N": N, "D": D, "H": H, "V": V, "device": dev, "threads": args.threads,
        "budget_mb": args.budget_mb, "hidden_active_fraction": active,
        "torchfunc_mode": mode_b, "torchfunc_calibration_s": {"jacfwd": t_fwd, "jacrev": t_rev},
        "rounds": rounds, "times_s": times,
        "workload": {"a_units": int(len(a_units)), "b_samples": nb, "c_samples": nc, "d_samples": nd},
        "full_problem_s": full, "extrapolated": extrap,
        "gemm_floor_gflops": 2 * N * V * H * D / full["d"] / 1e9,
        "engine_over_gemm": full["d"] / full["c"],
        "speedup_vs_torchfunc": full["b"] / full["c"],
        "speedup_vs_unit_loop": full["a"] / full["c"],
        "per_round": [{"engine_over_gemm": (times["d"][r] * N / nd) / engine_full(r),
                       "speedup_vs_torchfunc": (times["b"][r] * N / nb) / engine_full(r),
                       "speedup_vs_unit_loop": (times["a"][r] * V / len(a_units))
                       / engine_full(r)} for r in range(rounds)],
        "max_abs_diff": diffs,
        "load_average": {"start": load0, "end": os.getloadavg()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "notes": [],
    }
    if rss:
        budgets = args.rss_budgets or [args.budget_mb]
        main_rec = [r for r in rss if r["budget_mb"] == budgets[-1] and r["N"] == N][0]
        out["peak_rss_mb"] = main_rec["peak_rss_mb"]
        out["budget_mb"] = main_rec["budget_mb"]
        out["engine_subprocess_s"] = main_rec["seconds"]
        out["rss_runs"] = rss
    if t_full_engine is not None:
        out["engine_full_run_s"] = t_full_engine
        out["notes"].append("engine time extrapolated from rounds on a sample subset (after the "
                            "full mean Jacobian); engine_full_run_s is one full run in this process")
    for k, name in (("a", "unit loop"), ("b", "torch.func"), ("d", "GEMM floor")):
        if extrap[k]:
            out["notes"].append(f"{name} timed on a subset ({out['workload']}) and extrapolated "
                                "linearly to the full problem")
    if extrap["b"]:
        out["notes"].append("torch.func extrapolation is of ONE pass over the Jacobians with all "
                            "chunks kept in memory; at full size that would need the whole tensor "
                            "(or a second pass), so its real cost is higher")
    out["checks"] = {
        "engine_over_gemm>=1.2": out["engine_over_gemm"] >= 1.2,
        "speedup_vs_torchfunc>=2": out["speedup_vs_torchfunc"] >= 2,
        "speedup_vs_unit_loop>=4": out["speedup_vs_unit_loop"] >= 4,
        "speedup_vs_unit_loop>=15": out["speedup_vs_unit_loop"] >= 15,
        "peak_rss<=budget+500": (out.get("peak_rss_mb", math.inf) <= out["budget_mb"] + 500),
    }
    _print_table(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


def _print_table(out: dict) -> None:
    rows = [("(a) unit loop", "a"), ("(b) torch.func " + out["torchfunc_mode"], "b"),
            ("(c) engine", "c"), ("(d) GEMM floor", "d")]
    print(f"\nJacobian benchmark --size {out['size']}: N={out['N']} D={out['D']} H={out['H']} "
          f"V={out['V']}, {out['threads']} threads, budget {out['budget_mb']:g} MB, "
          f"hidden active fraction {out['hidden_active_fraction']:.3f}")
    print(f"{'method':28s} {'best round (s)':>15s} {'full problem (s)':>17s}  extrapolated")
    for name, k in rows:
        print(f"{name:28s} {min(out['times_s'][k]):15.2f} {out['full_problem_s'][k]:17.2f}  "
              f"{'yes' if out['extrapolated'][k] else 'no'}")
    print(f"engine_over_gemm {out['engine_over_gemm']:.2f}   speedup_vs_torchfunc "
          f"{out['speedup_vs_torchfunc']:.1f}   speedup_vs_unit_loop {out['speedup_vs_unit_loop']:.1f}"
          f"   GEMM floor {out['gemm_floor_gflops']:.0f} GFLOP/s")
    if "peak_rss_mb" in out:
        print(f"engine peak RSS {out['peak_rss_mb']:.0f} MB (budget {out['budget_mb']:g} MB)")
    for k, v in out["max_abs_diff"].items():
        if v:
            print(f"{k:40s} max |diff| {v['max_abs_diff']:.3g} (max |value| {v['max_abs_value']:.3g})")
    for n in out["notes"]:
        print("note:", n)


if __name__ == "__main__":
    main()
