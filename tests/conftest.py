"""Shared test fixtures: paths to the real data beside the project, and offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Under pytest-xdist (`make test` runs one worker per core) each worker computes with one thread: two workers
# with two OpenMP/torch threads each on two cores spin against each other (scikit-learn's gradient boosting
# took 10x longer that way). Set before numpy, scikit-learn or torch start their thread pools.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SSTEM = SHARED_DATA / "sstem_drosophila_vnc"


@pytest.fixture(scope="session")
def sstem_dir() -> Path:
    """The real ssTEM sections (../shared/data/sstem_drosophila_vnc); skips when the folder is absent."""
    if not (SSTEM / "raw").is_dir():
        pytest.skip(f"real ssTEM data not found at {SSTEM} (../shared/data beside the project)")
    return SSTEM


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv3 ViT (4 registers) saved with save_pretrained (see tests/tiny_models.py)."""
    from tiny_models import make_tiny_vit

    return make_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-dinov3-vit")


@pytest.fixture(scope="session")
def tiny_convnext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv3 ConvNeXt saved with save_pretrained (see tests/tiny_models.py)."""
    from tiny_models import make_tiny_convnext

    return make_tiny_convnext(tmp_path_factory.mktemp("models") / "tiny-dinov3-convnext")


@pytest.fixture()
def offline_env(monkeypatch, tmp_path):
    """No NEUROS_CV_WEIGHTS and an empty HF cache, whatever this machine has."""
    from neuros.plugins.cv.backbones import weights

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    return cache


@pytest.fixture(scope="session")
def mni_volumes():
    """MNI152 T1 (2 mm) and a T2-like volume from the real tissue maps (CSF bright, GM mid, WM dark), float32.

    Shared by the registration tests (3-D cross-contrast pairs); skips where nilearn is not installed.
    """
    datasets = pytest.importorskip("nilearn.datasets")
    t1 = datasets.load_mni152_template(resolution=2).get_fdata()
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    csf = np.clip(brain - gm - wm, 0, 1)
    t2 = (0.95 * csf + 0.55 * gm + 0.25 * wm) * brain
    return t1.astype(np.float32), t2.astype(np.float32)


@pytest.fixture()
def em_tiffs(tmp_path):
    """``write(n, size)``: synthetic EM images and masks written as TIFF files in ``tmp_path`` (training input
    of the `segment train` CLI tests); returns (images, masks, image paths, mask paths)."""
    import tifffile

    from neuros.plugins.cv.datasets.synthetic import make_image

    def write(n: int, size: int):
        pairs = [make_image("em", size, seed=s) for s in range(n)]
        images, masks = [im for im, _ in pairs], [m.astype(np.int64) for _, m in pairs]
        for i, (im, m) in enumerate(zip(images, masks, strict=True)):
            tifffile.imwrite(tmp_path / f"im{i}.tif", im)
            tifffile.imwrite(tmp_path / f"m{i}.tif", m.astype(np.uint8))
        return (images, masks, [str(tmp_path / f"im{i}.tif") for i in range(n)],
                [str(tmp_path / f"m{i}.tif") for i in range(n)])

    return write
