"""CPU-vs-GPU parity of the Jacobian engine, then the benchmark on the GPU, in one go.

    python benchmarks/gpu_check.py --out results/            # needs CUDA; exits 0 without it
    python benchmarks/gpu_check.py --out $OUT --sizes small nsd --budget-mb 4096

Parity: the same models and inputs on CPU and CUDA, in float64 (tight tolerance) and
float32 (float32 tolerance): analytic blocks, the torch.func fallback, the mean Jacobian
and every per-(sample, unit) statistic of ``deviation_statistics``, for a one-layer ReLU
net (the complement path), a LeakyReLU net with biases, and a deep residual GELU net.
Then benchmarks/jacobian.py runs with --device cuda for each size. Everything is
written to --out (parity.json, bench_<size>.json, log.txt); the exit status is 1 when
a parity check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def parity(log, devices=("cpu", "cuda")) -> dict:
    from torch import nn

    from linbridge.encoders import build_mlp
    from linbridge.jacobian import (ModelJacobianSource, deviation_statistics,
                                    weighted_mean_jacobian)

    class Odd(nn.Module):  # not an MLP: the torch.func fallback
        def __init__(self):
            super().__init__()
            self.a, self.n, self.b = nn.Linear(48, 64), nn.LayerNorm(64), nn.Linear(64, 300)

        def forward(self, x):
            return self.b(torch.tanh(self.n(self.a(x))))

    cases = {
        "relu_1layer": dict(activation="relu"),
        "leaky_bias": dict(activation="leaky_relu", bias=True),
        "gelu_deep_residual": dict(activation="gelu", depth=2, residual_blocks=2, bias=True),
    }
    results = {}
    stats = ("jac_l2sq", "jx", "l1", "l2sq", "down", "euler")
    for name, kw in list(cases.items()) + [("torchfunc_fallback", None)]:
        torch.manual_seed(0)
        model = (build_mlp(48, 300, hidden=64, **kw) if kw is not None else Odd()).eval()
        X = torch.randn(40, 48)
        P = np.random.default_rng(0).standard_normal((48, 2))
        for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
            out = {}
            for device in devices:
                t0 = time.perf_counter()
                src = ModelJacobianSource(model, X, dtype=dtype, device=device, memory_budget_mb=4)
                Jbar = weighted_mean_jacobian(src)
                refs = {"mean": Jbar, "shifted": Jbar + 0.01}
                st = deviation_statistics(src, refs, P, stats=stats)
                blk = src.block(slice(0, 7), np.arange(0, 300, 7)).double().cpu().numpy()
                out[len(out)] = (Jbar, st, blk, time.perf_counter() - t0)
            (Jc, sc, bc, tc), (Jg, sg, bg, tg) = out[0], out[1]
            worst = {"block": _rel(bg, bc), "mean_jacobian": _rel(Jg, Jc)}
            for f in ("jac_l2sq", "jx", "outputs"):
                worst[f] = _rel(getattr(sg, f), getattr(sc, f))
            for f in ("l1", "l2sq", "down", "linear"):
                for r in ("mean", "shifted"):
                    worst[f"{f}[{r}]"] = _rel(getattr(sg, f)[r], getattr(sc, f)[r])
            ok = all(v <= rtol for v in worst.values())
            key = f"{name}/{str(dtype).replace('torch.', '')}"
            results[key] = {"ok": ok, "rtol": rtol, "worst_rel_diff": worst, "cpu_s": tc,
                            "cuda_s": tg, "method": src.method}
            log(f"parity {key:34s} {'ok ' if ok else 'FAIL'} max rel diff "
                f"{max(worst.values()):.2e} (tol {rtol:g}); cpu {tc:.2f}s cuda {tg:.2f}s")
    return results


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.abs(b).max()), 1e-300)
    return float(np.abs(a - b).max()) / scale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--sizes", nargs="*", default=["small", "nsd"])
    ap.add_argument("--budget-mb", type=float, default=4096.0)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    if not torch.cuda.is_available():
        log("no CUDA device: nothing to check")
        return 0
    log(f"device {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
        f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    status = 0
    try:
        res = parity(log)
        with open(os.path.join(args.out, "parity.json"), "w") as f:
            json.dump(res, f, indent=1)
        if not all(r["ok"] for r in res.values()):
            status = 1
    except Exception:  # keep going to the benchmark; the log has the traceback
        log(traceback.format_exc())
        status = 1
    sys.path.insert(0, HERE)
    import jacobian as bench

    for size in args.sizes:
        try:
            log(f"benchmark --size {size} --device cuda ...")
            r = bench.main(["--size", size, "--device", "cuda", "--budget-mb", str(args.budget_mb),
                            "--json", os.path.join(args.out, f"bench_{size}.json")])
            log(json.dumps({k: r[k] for k in ("engine_over_gemm", "speedup_vs_torchfunc",
                                              "speedup_vs_unit_loop", "full_problem_s")},
                           default=float))
        except Exception:
            log(traceback.format_exc())
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
