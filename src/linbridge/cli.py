"""Command-line interface: wires the stages together; no science here."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LinBridge: interpret nonlinear neural encoding models through their Jacobians.")


def _short_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line for people at a terminal, not a source excerpt."""
    return f"warning: {message}\n"


@app.callback()
def _setup() -> None:
    warnings.formatwarning = _short_warning


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def _run(cfg, out: Path, quiet: bool) -> dict:
    from .pipeline import run

    try:
        return run(cfg, out, progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))


def _print_summary(m: dict, out: Path) -> None:
    enc, inh, idx = m["encoders"], m["inherent"], m["indices"]
    typer.echo(f"run directory: {out}")
    typer.echo("median test r: " + ", ".join(f"{k} {v['median_r']:.3f}" for k, v in enc.items()))
    typer.echo("inherent median r: " + ", ".join(f"{k} {v['median_r']:.3f}" for k, v in inh.items()))
    typer.echo(f"median nonlinear fraction {idx['nonlinearity']['median']:.4f}, "
               f"median JNE {idx['jne']['median']:.4g}")
    if "ground_truth" in m:
        gt = m["ground_truth"]
        typer.echo(f"ground truth: inherent vs planted r learned "
                   f"{gt['learned']['inherent_vs_planted_r']:.3f}, mean Jacobian "
                   f"{gt['mean_jacobian']['inherent_vs_planted_r']:.3f}; index vs planted Spearman "
                   f"{gt['nonlinearity_vs_planted_spearman']:.3f}; tier medians "
                   + ", ".join(f"{k} {v:.3f}" for k, v in gt["tier_medians"].items()))
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def demo(dataset: str = typer.Option("synthetic", help="synthetic | cowley2023-v4"),
         out: Path = typer.Option(Path("runs/demo"), help="run directory"),
         data_home: Optional[Path] = typer.Option(None, envvar="LINBRIDGE_DATA",
                                                  help="folder holding the data sets"),
         session: Optional[str] = typer.Option(None, help="cowley2023-v4 session "
                                               "(default 201025)"),
         seed: int = typer.Option(0, help="seed of the encoders and learner"),
         quiet: bool = typer.Option(False, help="no progress output")) -> None:
    """Run the whole LinBridge job on a built-in dataset."""
    from .config import config_from_dict

    d: dict = {"dataset": {"name": dataset, "params": {}}, "seed": seed}
    if session:
        d["dataset"]["params"]["session"] = session
    if data_home:
        d["data_home"] = str(data_home)
    try:
        cfg = config_from_dict(d, where="demo")
    except ValueError as e:
        _fail(str(e))
    _print_summary(_run(cfg, out, quiet), out)


@app.command("run")
def run_config(config: Path = typer.Argument(..., help="YAML configuration"),
               out: Path = typer.Option(Path("runs/run"), help="run directory"),
               data_home: Optional[Path] = typer.Option(None, envvar="LINBRIDGE_DATA",
                                                        help="folder holding the data sets "
                                                        "(overrides the config's data_home)"),
               set_: list[str] = typer.Option([], "--set", metavar="KEY.PATH=VALUE", help="override, e.g. "
                                              "--set dataset.params.subject=2 (value is YAML)"),
               quiet: bool = typer.Option(False, help="no progress output")) -> None:
    """Run the job described by a YAML configuration (configs/nsd_paper.yaml is an example)."""
    from .config import load_config

    try:
        cfg = load_config(config, overrides=set_)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if data_home:
        cfg.data_home = str(data_home)
    _print_summary(_run(cfg, out, quiet), out)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Rebuild report.html of a finished run without recomputing."""
    from .report import build_report

    if not (run_dir / "metrics.json").exists():
        _fail(f"{run_dir} is not a finished run (no metrics.json)")
    typer.echo(str(build_report(run_dir)))


@app.command()
def fetch(dataset: str = typer.Argument(..., help="cowley2023-v4"),
          dest: Path = typer.Option(..., "--data-home", envvar="LINBRIDGE_DATA",
                                    help="where to put the files"),
          base_url: Optional[str] = typer.Option(None, help="mirror (URL or local folder)")) -> None:
    """Download a public dataset with SHA-256 checks."""
    if dataset != "cowley2023-v4":
        _fail(f"unknown dataset {dataset!r}; available: cowley2023-v4")
    from .data.fetch import fetch_cowley2023_v4

    kwargs = {"base_url": base_url} if base_url else {}
    try:
        paths = fetch_cowley2023_v4(dest, **kwargs)
    except (ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(f"{len(paths)} files verified under {dest}")


from .data.nsd_fixture import nsd_fixture_command  # noqa: E402

app.command("nsd-fixture")(nsd_fixture_command)


@app.command()
def validate(out: Path = typer.Option(Path("runs/validate"), help="where validation.json and "
                                      "validation.md go"),
             quick: bool = typer.Option(False, help="small sizes and few repetitions "
                                        "(for tests; the thresholds are the full suite's)"),
             seed: int = typer.Option(0, help="seed of data, encoders, learner and simulations"),
             threads: Optional[int] = typer.Option(None, help="torch CPU threads "
                                                   "(default: torch's choice)"),
             quiet: bool = typer.Option(False, help="no progress output")) -> None:
    """Known-answer suite (planted functions, JNE simulations, Gabor cells, collapse).

    Writes OUT/validation.json (one entry per check: value, threshold, passed) and
    OUT/validation.md (the table); exits with code 1 when a judged check fails.
    """
    import time as _time

    import torch as _torch

    from .validation import run_suite
    from .validation._core import Check, table

    if threads:
        _torch.set_num_threads(threads)
    t0 = _time.perf_counter()
    say = None if quiet else (lambda s: typer.echo(
        f"[validate {_time.perf_counter() - t0:6.0f} s] {s}", err=True))
    doc = run_suite(out, quick=quick, seed=seed, progress=not quiet, log=say)
    checks = [Check(id=k, **{f: v for f, v in c.items() if f != "passed"}, passed=c["passed"])
              for k, c in doc["checks"].items()]
    typer.echo(table(checks))
    typer.echo(f"{doc['n_checks'] - doc['n_failed']} of {doc['n_checks']} judged checks passed "
               f"in {doc['meta']['wall_seconds']:.0f} s; {Path(out) / 'validation.json'}")
    if doc["n_failed"]:
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover
    app(prog_name="linbridge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
