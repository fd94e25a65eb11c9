"""Run configuration: dataclasses, YAML in and out, dataset-specific defaults."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# Where the paper's setting stops early on small data, a dataset may carry better
# defaults. On V4 (850 training images, 1280 features) AdamW at lr 1e-3 reaches its best
# validation loss after 1-2 epochs; lr 1e-4 trains for several epochs and predicts better
# (measured by `linbridge demo --dataset cowley2023-v4`; see README).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    "cowley2023-v4": {
        "encoders": {"mlp_relu": {"lr": 1e-4}, "mlp_linear": {"lr": 1e-4}},
    },
}


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodersConfig:
    ridge: dict[str, Any] = field(default_factory=dict)
    mlp_linear: dict[str, Any] = field(default_factory=lambda: {"activation": "identity"})
    mlp_relu: dict[str, Any] = field(default_factory=lambda: {"activation": "relu"})


@dataclass
class JacobianConfig:
    method: str = "auto"          # auto | analytic | autodiff | jacfwd | jacrev
    memory_budget_mb: float = 1024.0
    device: str = "cpu"


@dataclass
class BridgeConfig:
    learner: dict[str, Any] = field(default_factory=dict)  # LinBridge keyword arguments
    baselines: list[str] = field(default_factory=lambda: [
        "mean_jacobian", "median", "ls_distillation", "ridge", "mlp_linear"])
    # non-circular check: fit on one half of the test samples, score on the other
    heldout: bool = True
    # the learned component across batch sizes (those up to half the test set) and seeds;
    # ~10 extra learner fits, so off by default; benchmarks/learner_vs_mean.py reports it
    stability: bool = False
    stability_batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    stability_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class MetricsConfig:
    n_boot: int = 200
    fdr_q: float = 0.05
    afd_tsne_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class AnalysisConfig:
    tier_map: dict[str, list[str]] | None = None  # tier -> labels; None: the dataset's tiers
    n_boot: int = 1000          # bootstrap resamples for effect-size confidence intervals
    n_strata: int | None = None  # strata of noise ceiling / test R^2 (None: chosen from n_units)
    afd_n_random: int = 100     # random orderings for AFD's null
    n_threads: int = 1          # BLAS threads for t-SNE / k-means (1 is fastest on small data)


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    jacobian: JacobianConfig = field(default_factory=JacobianConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seed: int = 0
    data_home: str | None = None
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"dataset": DatasetConfig, "encoders": EncodersConfig, "jacobian": JacobianConfig,
             "bridge": BridgeConfig, "metrics": MetricsConfig, "analysis": AnalysisConfig}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(d: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig, applying the dataset's defaults under the given values."""
    d = dict(d or {})
    unknown = set(d) - set(_SECTIONS) - {"seed", "data_home", "cache_dir"}
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {sorted(unknown)}; "
                         f"expected {sorted(_SECTIONS) + ['seed', 'data_home', 'cache_dir']}")
    name = (d.get("dataset") or {}).get("name", "synthetic")
    d = _merge(DATASET_DEFAULTS.get(name, {}), d)
    base = RunConfig()
    kwargs: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        sec = d.get(key) or {}
        if not isinstance(sec, dict):
            raise ValueError(f"{where}: section '{key}' must be a mapping, got {type(sec).__name__}")
        _check_keys(sec, {f.name for f in fields(cls)}, where, f"section '{key}'")
        kwargs[key] = cls(**_merge(asdict(getattr(base, key)), sec))
    for k in ("seed", "data_home", "cache_dir"):
        if k in d:
            kwargs[k] = d[k]
    cfg = RunConfig(**kwargs)
    _check_component_params(cfg, where)
    return cfg


def _check_keys(params: dict[str, Any], valid: set[str], where: str, key: str) -> None:
    bad = set(params) - valid
    if bad:
        raise ValueError(f"{where}: unknown key(s) {sorted(bad)} in {key}; valid: {sorted(valid)}")


def _components() -> dict[tuple[str, str], type]:
    """(section, key) of every keyword-argument mapping in a config -> the class it feeds."""
    from .bridge import LinBridge
    from .encoders import MLPEncoder, RidgeEncoder

    return {("encoders", "ridge"): RidgeEncoder, ("encoders", "mlp_linear"): MLPEncoder,
            ("encoders", "mlp_relu"): MLPEncoder, ("bridge", "learner"): LinBridge}


_NOT_CONFIGURABLE = ("self", "progress", "checkpoint_path")  # set by the pipeline itself


def _check_component_params(cfg: RunConfig, where: str) -> None:
    """Refuse unknown dataset/encoder/learner keys and bad learner values now, not after
    the data has loaded and the encoders have trained."""
    import inspect

    from .bridge import LinBridge
    from .data.registry import dataset_parameters

    try:
        ds_valid = dataset_parameters(cfg.dataset.name)
    except ValueError as e:
        raise ValueError(f"{where}: dataset.name: {e}") from None
    _check_keys(cfg.dataset.params, ds_valid, where, "dataset.params")
    for (section, key), cls in _components().items():
        valid = set(inspect.signature(cls.__init__).parameters) - set(_NOT_CONFIGURABLE)
        _check_keys(getattr(getattr(cfg, section), key), valid, where, f"{section}.{key}")
    try:
        LinBridge(**cfg.bridge.learner).check_params()
    except ValueError as e:
        raise ValueError(f"{where}: bridge.learner: {e}") from None


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a config mapping."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: '{k}' is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return d


def load_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config; relative data_home/cache_dir resolve against the file's folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    d = apply_overrides(d, overrides or [])
    for k in ("data_home", "cache_dir"):
        if d.get(k) and not Path(d[k]).is_absolute():
            d[k] = str((path.parent / d[k]).resolve())
    return config_from_dict(d, where=str(path))


def _plain(v: Any) -> Any:
    """YAML-safe: tuples to lists, numpy scalars to Python numbers."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v


def effective_params(cls: type, given: dict[str, Any], seed: int) -> dict[str, Any]:
    """The keyword arguments ``cls`` runs with: its defaults (seed = the run's seed, as the
    pipeline passes it) updated with the configured ones."""
    import inspect

    out = {k: _plain(p.default) for k, p in inspect.signature(cls.__init__).parameters.items()
           if k not in _NOT_CONFIGURABLE and p.default is not inspect.Parameter.empty}
    if "seed" in out:
        out["seed"] = seed
    return {**out, **given}


def dump_config(cfg: RunConfig, effective: bool = False) -> str:
    """The configuration as YAML; ``effective=True`` spells out the encoder and learner
    defaults, so a run directory's config.yaml says exactly what ran (and reads back to
    the same run)."""
    d = cfg.to_dict()
    if effective:
        for (section, key), cls in _components().items():
            d[section][key] = effective_params(cls, d[section][key], cfg.seed)
    return yaml.safe_dump(d, sort_keys=False)
