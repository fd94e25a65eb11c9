"""CLIP features on a tiny random-weight CLIP vision model built here (no download)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from linbridge.features import clip as C  # noqa: E402

# independent constants: CLIP's published normalisation
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "clip"
    C.build_tiny_clip(d, seed=0, image_size=32, n_blocks=3)
    return d


@pytest.fixture(scope="module")
def clip(model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return C.load_clip_vision(model_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)  # non-square: resize + crop


def test_defaults():
    assert C.DEFAULT_CLIP_MODEL == "openai/clip-vit-base-patch32"
    assert C.DEFAULT_LAYER == "final_cls"
    assert C.CLIP_MEAN == OPENAI_MEAN and C.CLIP_STD == OPENAI_STD


def test_tiny_model_saved_like_a_checkpoint(model_dir, clip):
    for f in ("config.json", "preprocessor_config.json", C.FIXTURE_MARKER):
        assert (model_dir / f).is_file()
    assert list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    assert clip.is_fixture and clip.source == "dir"
    assert (clip.n_blocks, clip.hidden_size, clip.projection_dim) == (3, 32, 16)
    assert len(clip.fingerprint) == 64
    with pytest.warns(UserWarning, match="random-weight"):
        C.load_clip_vision(model_dir)


def test_resolve_model(tmp_path, model_dir):
    assert C.resolve_clip_model(model_dir) == ("dir", str(model_dir.resolve()))
    # <data_home>/models/<hub name> mirror
    mirror = tmp_path / "models" / "openai" / "clip-vit-base-patch32"
    mirror.mkdir(parents=True)
    assert C.resolve_clip_model("openai/clip-vit-base-patch32", tmp_path) == ("dir", str(mirror.resolve()))
    assert C.resolve_clip_model("openai/clip-vit-base-patch32", tmp_path / "none") == (
        "hub", "openai/clip-vit-base-patch32")
    with pytest.raises(FileNotFoundError):
        C.resolve_clip_model(tmp_path / "missing")


def test_preprocessing_is_clip_preprocessing(clip, images):
    """Shortest edge -> 32 (bicubic), centre crop 32 x 32, /255, CLIP mean/std."""
    from PIL import Image

    got = C.clip_preprocess(clip, images).numpy()
    assert got.shape == (5, 3, 32, 32) and got.dtype == np.float32
    h, w = images.shape[1:3]
    nh, nw = (32, int(32 * w / h)) if h <= w else (int(32 * h / w), 32)
    for n, im in enumerate(images[:2]):
        r = np.asarray(Image.fromarray(im).resize((nw, nh), Image.BICUBIC), dtype=np.float64)
        top, left = (nh - 32) // 2, (nw - 32) // 2
        r = r[top:top + 32, left:left + 32] / 255.0
        want = ((r - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)
        np.testing.assert_allclose(got[n], want, atol=1e-5)
    with pytest.raises(TypeError):
        C.clip_preprocess(clip, images.astype(np.float32))


def test_layers_match_model_outputs(clip, images):
    layers = ["final_cls", "block_0_cls", "block_1_cls", "block_3_cls", "pooled", "image_embeds"]
    f = C.extract_clip_features(images, clip, layers, batch_size=2, progress=False)
    with torch.no_grad():
        out = clip.model(pixel_values=C.clip_preprocess(clip, images), output_hidden_states=True)
        pooled = clip.model.vision_model(pixel_values=C.clip_preprocess(clip, images)).pooler_output
    hs = out.hidden_states
    assert len(hs) == clip.n_blocks + 1
    np.testing.assert_allclose(f["final_cls"], out.last_hidden_state[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(f["final_cls"], f["block_3_cls"])
    np.testing.assert_allclose(f["block_0_cls"], hs[0][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(f["block_1_cls"], hs[1][:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(f["pooled"], pooled.numpy(), atol=1e-5)
    np.testing.assert_allclose(f["image_embeds"], out.image_embeds.numpy(), atol=1e-5)
    assert f["final_cls"].shape == (5, 32) and f["image_embeds"].shape == (5, 16)
    assert not np.allclose(f["block_1_cls"], f["final_cls"])


def test_layer_names():
    assert C.parse_layer("final_cls", 12) == ("cls", 12)
    assert C.parse_layer("block_7_cls", 12) == ("cls", 7)
    assert C.parse_layer("image_embeds", 12)[0] == "image_embeds"
    with pytest.raises(ValueError, match="blocks 1..12"):
        C.parse_layer("block_13_cls", 12)
    with pytest.raises(ValueError, match="unknown feature layer"):
        C.parse_layer("last", 12)


def test_batching_and_callable_source(clip, images):
    a = C.extract_clip_features(images, clip, "final_cls", batch_size=5, progress=False)["final_cls"]
    b = C.extract_clip_features(lambda idx: images[idx], clip, "final_cls", batch_size=2,
                                progress=False, n_images=5)["final_cls"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="without len"):
        C.extract_clip_features(lambda idx: images[idx], clip, "final_cls", progress=False)


def test_cache_records_model_layer_and_ids(clip, images, tmp_path, monkeypatch):
    ids = [f"img{i}" for i in range(5)]
    f1 = C.cached_clip_features(images, ids, clip, "final_cls", {"source": "test"},
                                cache_dir=tmp_path, progress=False)
    side = list((tmp_path / "features").glob("*.json"))
    assert len(side) == 1
    meta = json.loads(side[0].read_text())
    assert meta["key"]["model"] == clip.name and meta["key"]["layer"] == "final_cls"
    assert meta["key"]["weights_sha256"] == clip.fingerprint
    assert meta["key"]["n_images"] == 5 and meta["info"]["image_ids_first_last"] == ["img0", "img4"]

    def boom(*a, **k):
        raise AssertionError("recomputed despite a cache hit")

    monkeypatch.setattr(C, "extract_clip_features", boom)
    f2 = C.cached_clip_features(images, ids, clip, "final_cls", {"source": "test"},
                                cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(f1, f2)
    with pytest.raises(AssertionError, match="recomputed"):  # another layer is another entry
        C.cached_clip_features(images, ids, clip, "image_embeds", {"source": "test"},
                               cache_dir=tmp_path, progress=False)


def test_other_weights_other_key(clip, tmp_path):
    d = tmp_path / "other"
    C.build_tiny_clip(d, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = C.load_clip_vision(d)
    assert other.fingerprint != clip.fingerprint
    assert C.clip_cache_key(other, "final_cls", ["a"]) != C.clip_cache_key(clip, "final_cls", ["a"])


def test_full_clip_checkpoint_loads_vision_tower(tmp_path):
    """Hub checkpoints hold text + vision (model_type "clip", projection width on top)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=99, max_position_embeddings=8,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=12)
    torch.manual_seed(0)
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path / "full")
    c = C.load_clip_vision(tmp_path / "full")  # no preprocessor config: CLIP defaults
    assert (c.n_blocks, c.hidden_size, c.projection_dim, c.is_fixture) == (2, 32, 12, False)
    im = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    f = C.extract_clip_features(im, c, "image_embeds", progress=False)["image_embeds"]
    with torch.no_grad():
        want = full.get_image_features(pixel_values=C.clip_preprocess(c, im))
    want = want if torch.is_tensor(want) else want.pooler_output
    np.testing.assert_allclose(f, want.numpy(), atol=1e-5)
