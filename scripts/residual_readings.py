#!/usr/bin/env python3
"""Which reading of the JNE paper's "untrained residual net 768 -> 768 -> 1" gives its ordering?

The paper reports JNE with the activation placed nowhere / shallow / deep / both as
0, then shallow < deep < both. Its architecture is not published. This script measures
the ordering over repetitions for several readings (docs/validation.md, checks 3d/3e):

  first layer    residual: h1 = x + phi1(W1 x)      plain: h1 = phi1(W1 x)
  second layer   residual: h2 = h1 + phi2(W2 h1)    plain: h2 = phi2(W2 h1)
                 post:     h2 = phi2(h1 + W2 h1)
  weights        PyTorch default nn.Linear init, W2 optionally scaled to a row gain
                 g = sqrt(fan_in * Var(W2)) (default init: g = 1/sqrt(3)), or torch.randn

Usage: python scripts/residual_readings.py [--reps 8] [--width 768] [--samples 1000]
Prints one line per (reading, activation): median JNE per placement and the fraction of
repetitions with shallow < deep, deep < both, and shallow < deep < both.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from linbridge.validation.jne_sims import ACTIVATIONS, _net_indices, _ResNet, residual_jacobians

READINGS = [  # (first layer, second layer, W2 gain or "randn")
    ("residual", "residual", None), ("plain", "residual", None),
    ("plain", "residual", 1.0), ("plain", "residual", math.sqrt(2)), ("plain", "residual", 2.0),
    ("plain", "residual", "randn"), ("plain", "plain", None), ("plain", "post", None),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for first, second, gain in READINGS:
        jne = {a: {p: [] for p in ("shallow", "deep", "both")} for a in ACTIVATIONS}
        for r in range(args.reps):
            net = _ResNet(args.width, args.width, seed=r)
            g = torch.Generator().manual_seed(10_000 + r)
            if gain == "randn":
                net.W1, net.W2 = (torch.randn(args.width, args.width, generator=g) for _ in "12")
                net.w3 = torch.randn(args.width, generator=g)
            elif gain is not None:
                net.W2 = net.W2 * gain * math.sqrt(3.0)  # default init has gain 1/sqrt(3)
            X = torch.rand(args.samples, args.width, generator=g) * 20 - 10
            for name, cls in ACTIVATIONS.items():
                for p, (a1, a2) in {"shallow": (cls(), None), "deep": (None, cls()),
                                    "both": (cls(), cls())}.items():
                    J = residual_jacobians(net, X, a1, a2, first, second)
                    jne[name][p].append(_net_indices(J)[0])
        label = f"first={first} second={second} W2={'default' if gain is None else gain}"
        for name, v in jne.items():
            s, d, b = (np.asarray(v[p]) for p in ("shallow", "deep", "both"))
            print(f"{label:52s} {name:10s} median JNE {np.median(s):.4g} / {np.median(d):.4g} / "
                  f"{np.median(b):.4g}  s<d {np.mean(s < d):.2f}  d<b {np.mean(d < b):.2f}  "
                  f"s<d<b {np.mean((s < d) & (d < b)):.2f}", flush=True)


if __name__ == "__main__":
    main()
