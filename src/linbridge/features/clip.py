"""CLIP-ViT image features through ``transformers`` (optional extra ``linbridge[clip]``).

The paper's setting: ``openai/clip-vit-base-patch32``, hidden width 768, and the CLS token of
the final transformer block as the feature of an image.

Model source (``resolve_clip_model``), first match wins:

1. an existing directory (absolute, or relative to the working directory);
2. ``<data_home>/models/<name>`` when ``data_home`` is given and that directory exists - a local
   mirror for machines without network, e.g. ``$NSD/models/openai/clip-vit-base-patch32``
   written with ``huggingface-cli download openai/clip-vit-base-patch32 --local-dir ...``. The
   NSD fixture puts its tiny random-weight CLIP there, so the paper config runs on it unchanged;
3. otherwise the name goes to ``from_pretrained`` as a hub name (from the local Hugging Face
   cache when offline). Failure raises an error that lists what was tried.

A directory that holds ``LINBRIDGE_FIXTURE_MODEL.txt`` is a random-weight test model: loading
it warns, and ``ClipVision.is_fixture`` is True.

Layers (``feature_layer``):

* ``final_cls`` - CLS token of the last block's output (``hidden_states[-1][:, 0]``, before the
  post-layernorm), width ``hidden_size`` (768 for ViT-B/32). The default.
* ``block_N_cls`` - CLS token after block N (1..n_blocks; ``block_0_cls`` is the embedding
  output after CLIP's pre-layernorm, the encoder's input). ``block_{n_blocks}_cls`` equals
  ``final_cls``.
* ``pooled`` - the final CLS token after CLIP's post-layernorm (``pooler_output``).
* ``image_embeds`` - the projected image embedding (``visual_projection(pooled)``), width
  ``projection_dim`` (512 for ViT-B/32), the vector CLIP compares with text.

Preprocessing is CLIP's own image processor read from the model directory
(``preprocessor_config.json``: resize the shortest edge to 224 with bicubic resampling, centre
crop 224 x 224, scale to [0, 1], normalise with CLIP's mean/std); without that file the
processor is built from CLIP's defaults at the model's ``image_size``. Forward passes run in
float32, eval mode, under ``torch.no_grad()``, in batches.

Cache: ``cached_clip_features`` stores each (model, layer, image set) array through
``features/_cache.py``; the key holds the model name, a SHA-256 of the model's weights, the
layer, the preprocessing settings and the hash of the image ids, and the sidecar records them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ._images import ImageSource, count_images, iter_image_batches
from ._cache import cached_features, hash_strings

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_LAYER = "final_cls"
#: CLIP's normalisation constants (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: a file with this name marks a random-weight model written by a test fixture
FIXTURE_MARKER = "LINBRIDGE_FIXTURE_MODEL.txt"


_LAYER_RE = re.compile(r"^block_(\d+)_cls$")


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "CLIP features need the optional dependency 'transformers': "
            "pip install 'linbridge[clip]' (install torch first, see the README)"
        ) from err
    return transformers


def resolve_clip_model(name_or_path: str | os.PathLike,
                       data_home: str | os.PathLike | None = None) -> tuple[str, str]:
    """Where the model comes from: (``"dir"``, path) or (``"hub"``, name). See the module doc."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        return "dir", str(p.resolve())
    if data_home is not None and not p.is_absolute():
        q = Path(data_home).expanduser() / "models" / s
        if q.is_dir():
            return "dir", str(q.resolve())
    if p.is_absolute() or s.startswith("."):
        raise FileNotFoundError(f"CLIP model directory {s} does not exist")
    return "hub", s


def _model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the state dict, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ClipVision:
    """A loaded CLIP vision tower with its processor and what identifies it."""

    model: Any
    processor: Any
    name: str
    source: str  # "dir" or "hub"
    location: str  # resolved directory or hub name
    fingerprint: str
    n_blocks: int
    hidden_size: int
    projection_dim: int
    image_size: int
    is_fixture: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def layer_width(self, layer: str) -> int:
        kind, _ = parse_layer(layer, self.n_blocks)
        return self.projection_dim if kind == "image_embeds" else self.hidden_size

    def info(self) -> dict[str, Any]:
        """JSON-able description (recorded in caches and run metadata)."""
        return {"model": self.name, "source": self.source, "location": self.location,
                "weights_sha256": self.fingerprint, "n_blocks": self.n_blocks,
                "hidden_size": self.hidden_size, "projection_dim": self.projection_dim,
                "image_size": self.image_size, "is_fixture": self.is_fixture,
                "preprocessing": self.preprocessing}


def parse_layer(layer: str, n_blocks: int) -> tuple[str, int]:
    """``layer`` -> (kind, index into hidden_states or -1). Raises on an unknown name."""
    if layer == "final_cls":
        return "cls", n_blocks
    if layer in ("pooled", "image_embeds"):
        return layer, -1
    m = _LAYER_RE.match(layer)
    if m:
        k = int(m.group(1))
        if not 0 <= k <= n_blocks:
            raise ValueError(f"feature layer {layer!r}: this model has blocks 1..{n_blocks} "
                             f"(block_0_cls is the embedding output)")
        return "cls", k
    raise ValueError(f"unknown feature layer {layer!r}; use 'final_cls', 'block_N_cls' "
                     f"(N = 0..{n_blocks}), 'pooled' or 'image_embeds'")


def _load_processor(location: str, image_size: int):
    tf = _require_transformers()
    cls = getattr(tf, "CLIPImageProcessorPil", None) or tf.CLIPImageProcessor  # v5 / v4
    if not Path(location).is_dir() or Path(location, "preprocessor_config.json").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(location)
    # CLIP's defaults at the model's resolution
    return cls(size={"shortest_edge": image_size},
               crop_size={"height": image_size, "width": image_size},
               do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
               resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def _processor_settings(proc) -> dict[str, Any]:
    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    d = proc.to_dict()
    out = {k: d.get(k) for k in keys}
    for k in ("size", "crop_size"):
        if isinstance(out[k], dict):
            out[k] = {a: b for a, b in out[k].items() if b is not None}
    return json.loads(json.dumps(out, default=str))


def load_clip_vision(name_or_path: str | os.PathLike = DEFAULT_CLIP_MODEL,
                     data_home: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu") -> ClipVision:
    """Load ``CLIPVisionModelWithProjection`` and CLIP's image processor (see module doc).

    Works for a full CLIP checkpoint (text + vision, as on the hub) and for a vision-only one.
    """
    tf = _require_transformers()
    source, location = resolve_clip_model(name_or_path, data_home)
    verbosity = tf.logging.get_verbosity()
    try:
        tf.logging.set_verbosity_error()  # the text tower of a full checkpoint is "unexpected"
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            cfg = tf.AutoConfig.from_pretrained(location)
            kw = {}
            if getattr(cfg, "model_type", "") == "clip":
                # a full CLIP checkpoint: the projection width lives on the top-level config
                vcfg = cfg.vision_config
                vcfg.projection_dim = cfg.projection_dim
                kw["config"] = vcfg
            model = tf.CLIPVisionModelWithProjection.from_pretrained(location, **kw)
    except OSError as err:
        tried = [str(Path(str(name_or_path)).expanduser())]
        if data_home is not None:
            tried.append(str(Path(data_home).expanduser() / "models" / str(name_or_path)))
        raise OSError(
            f"could not load CLIP model {str(name_or_path)!r} (tried directories {tried}, then "
            f"the hub/cache: {err}). Without network, download it once elsewhere and copy it "
            f"to <data_home>/models/{name_or_path}, or pass a local directory"
        ) from err
    finally:
        tf.logging.set_verbosity(verbosity)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    is_fixture = source == "dir" and Path(location, FIXTURE_MARKER).is_file()
    if is_fixture:
        warnings.warn(f"CLIP model at {location} is a tiny random-weight test model "
                      f"({FIXTURE_MARKER}); its features mean nothing", stacklevel=2)
    proc = _load_processor(location, int(cfg.image_size))
    return ClipVision(
        model=model, processor=proc, name=str(name_or_path), source=source, location=location,
        fingerprint=_model_fingerprint(model), n_blocks=int(cfg.num_hidden_layers),
        hidden_size=int(cfg.hidden_size), projection_dim=int(cfg.projection_dim),
        image_size=int(cfg.image_size), is_fixture=is_fixture,
        preprocessing=_processor_settings(proc),
    )


def clip_preprocess(clip: ClipVision, images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, S, S) float32 pixel values, by CLIP's image processor."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (n, H, W, 3) RGB, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    out = clip.processor(images=[np.ascontiguousarray(im) for im in images], return_tensors="pt")
    return out["pixel_values"].to(torch.float32)


def extract_clip_features(images: ImageSource, clip: ClipVision,
                          layers: str | Sequence[str] = DEFAULT_LAYER, batch_size: int = 32,
                          progress: bool = True, n_images: int | None = None
                          ) -> dict[str, np.ndarray]:
    """Features of every image at each requested layer, in one pass per batch.

    images : (n, H, W, 3) uint8 array, or a callable ``images(indices) -> (b, H, W, 3) uint8``
        called once per batch with consecutive indices (needs ``len()`` or ``n_images``).
    Returns {layer: (n, width) float32}.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    parsed = {ly: parse_layer(ly, clip.n_blocks) for ly in layers}
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = count_images(images, n_images)
    out = {ly: np.empty((n, clip.layer_width(ly)), dtype=np.float32) for ly in layers}
    device = next(clip.model.parameters()).device
    with torch.no_grad(), tqdm(total=n, unit="img", desc=f"CLIP {clip.name}",
                               disable=None if progress else True) as bar:
        for start, stop, batch in iter_image_batches(images, n, batch_size):
            pix = clip_preprocess(clip, batch).to(device)
            res = clip.model(pixel_values=pix, output_hidden_states=True)
            for ly, (kind, k) in parsed.items():
                if kind == "cls":
                    v = res.hidden_states[k][:, 0]
                elif kind == "pooled":
                    v = clip.model.vision_model.post_layernorm(res.hidden_states[-1][:, 0])
                else:
                    v = res.image_embeds
                out[ly][start:stop] = v.float().cpu().numpy()
            bar.update(stop - start)
    return out


def clip_cache_key(clip: ClipVision, layer: str, image_ids, **extra: Any) -> dict[str, Any]:
    """Cache key for ``layer`` features of the images named ``image_ids`` (in order).

    ``extra`` should pin the image content (stimulus file, its size, ...).
    """
    ids = [str(i) for i in image_ids]
    parse_layer(layer, clip.n_blocks)
    return {**extra, "extractor": "transformers.CLIPVisionModelWithProjection",
            "model": clip.name, "weights_sha256": clip.fingerprint, "layer": layer,
            "preprocessing": clip.preprocessing, "n_images": len(ids),
            "image_ids_sha256": hash_strings(ids)}


def cached_clip_features(images: ImageSource, image_ids, clip: ClipVision,
                         layer: str = DEFAULT_LAYER, key_extra: Mapping[str, Any] | None = None,
                         cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                         progress: bool = True) -> np.ndarray:
    """``extract_clip_features`` for one layer through the disk cache (``features/_cache.py``).

    The sidecar records the model name and location, the weights hash, the layer and the
    image ids (their hash in the key, the first and last ids and the count in ``info``).
    """
    ids = [str(i) for i in image_ids]
    key = clip_cache_key(clip, layer, ids, **dict(key_extra or {}))
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "batch_size": batch_size, "location": clip.location, "is_fixture": clip.is_fixture,
            "image_ids_first_last": [ids[0], ids[-1]] if ids else []}
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip.name.strip("/"))[-60:]
    return cached_features(
        key,
        lambda: extract_clip_features(images, clip, layer, batch_size=batch_size,
                                      progress=progress, n_images=len(ids))[layer],
        cache_dir, name=f"clip-{safe}-{layer}", info=info,
        announce=f"extracting {clip.name} features ({layer}) of {len(ids)} images" if progress else None,
    )


def build_tiny_clip(directory: str | os.PathLike | None = None, seed: int = 0,
                    image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                    n_blocks: int = 3, n_heads: int = 4, projection_dim: int = 16):
    """A tiny random-weight ``CLIPVisionModelWithProjection`` for tests (no download).

    With ``directory``: saved there with ``save_pretrained`` together with a CLIP image
    processor config at ``image_size`` and the fixture marker file, so ``load_clip_vision``
    reads it like a real checkpoint. Returns the model (eval mode).
    """
    tf = _require_transformers()
    cfg = tf.CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                              num_hidden_layers=n_blocks, num_attention_heads=n_heads,
                              image_size=image_size, patch_size=patch_size,
                              projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.CLIPVisionModelWithProjection(cfg).eval()
    if directory is not None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stderr(io.StringIO()):
            model.save_pretrained(d)
        cls = getattr(tf, "CLIPImageProcessorPil", None) or tf.CLIPImageProcessor
        cls(size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(d)
        (d / FIXTURE_MARKER).write_text(
            "Tiny random-weight CLIP vision model written by linbridge for tests and the NSD\n"
            f"fixture (seed {seed}, {n_blocks} blocks, width {hidden_size}, image {image_size}"
            f" px, patch {patch_size}). It is NOT openai/clip-vit-base-patch32: its features\n"
            "carry no meaning. Replace this folder with the real checkpoint for real runs.\n")
    return model


__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipVision", "DEFAULT_CLIP_MODEL", "DEFAULT_LAYER",
           "FIXTURE_MARKER", "build_tiny_clip", "cached_clip_features", "clip_cache_key",
           "clip_preprocess", "extract_clip_features", "load_clip_vision", "parse_layer",
           "resolve_clip_model"]
