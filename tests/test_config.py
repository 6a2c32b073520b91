from pathlib import Path

import pytest

from helpers.config import PRESETS, find_data_root, get_config, project_root
from tests.test_data import make_dataset


def test_presets_and_env_overrides(monkeypatch, tmp_path):
    data = make_dataset(tmp_path / "ImageNet-Subset")
    monkeypatch.setenv("IMSUB_DATA_ROOT", str(data))
    monkeypatch.setenv("IMSUB_EPOCHS", "7")
    monkeypatch.setenv("IMSUB_LR", "0.03")
    monkeypatch.setenv("IMSUB_SMALL_STEM", "false")
    cfg = get_config("smoke")
    assert cfg.preset == "smoke" and cfg.image_size == PRESETS["smoke"]["image_size"]
    assert cfg.epochs == 7 and cfg.lr == 0.03 and cfg.small_stem is False
    assert cfg.data_root == data.resolve() and cfg.data_source == "setting" and cfg.truth_root is None
    assert get_config("smoke", epochs=3).epochs == 3  # keyword beats environment
    with pytest.raises(TypeError, match="unknown config fields"):
        get_config("smoke", epochz=3)
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("tpu")
    monkeypatch.setenv("IMSUB_SMALL_STEM", "maybe")
    with pytest.raises(ValueError, match="IMSUB_SMALL_STEM"):
        get_config("smoke")


def test_preset_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMSUB_DATA_ROOT", str(make_dataset(tmp_path)))
    monkeypatch.setenv("IMSUB_PRESET", "cpu")
    assert get_config().preset == "cpu"


def test_discovery_order(monkeypatch, tmp_path):
    import helpers.config as config

    kaggle, colab, repo = tmp_path / "kaggle", tmp_path / "drive", tmp_path / "repo"
    local = make_dataset(repo / "data" / "ImageNet-Subset")
    monkeypatch.setattr(config, "KAGGLE_INPUT", kaggle)
    monkeypatch.setattr(config, "COLAB_DRIVE", colab)
    assert find_data_root(None, repo) == (local.resolve(), "local")
    drive = make_dataset(colab / "course" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (drive.resolve(), "colab")
    kag = make_dataset(kaggle / "imagenet-subset" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (kag.resolve(), "kaggle")
    explicit = make_dataset(tmp_path / "mine")
    assert find_data_root(explicit, repo) == (explicit.resolve(), "setting")
    assert find_data_root(tmp_path / "kaggle", repo) == (kag.resolve(), "setting")  # searched below
    assert find_data_root(None, tmp_path / "empty")[1] in ("kaggle", "colab")
    with pytest.raises(FileNotFoundError, match="no challenge data"):
        find_data_root(tmp_path / "nothing-here", repo)


def test_no_data_falls_back_to_demo(monkeypatch, tmp_path):
    import helpers.config as config

    monkeypatch.setattr(config, "KAGGLE_INPUT", tmp_path / "k")
    monkeypatch.setattr(config, "COLAB_DRIVE", tmp_path / "c")
    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path))
    monkeypatch.delenv("IMSUB_DATA_ROOT", raising=False)
    cfg = get_config("smoke", prepare_data=False)
    assert cfg.data_source == "demo"
    assert cfg.data_root == tmp_path / "data" / "demo" / "ImageNet-Subset"
    assert cfg.truth_root == tmp_path / "data" / "demo" / "truth"
    assert cfg.run_dir == tmp_path / "runs" / "smoke"


def test_project_root_found_from_a_subfolder(monkeypatch):
    monkeypatch.delenv("IMSUB_ROOT", raising=False)
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo / "notebooks")
    assert project_root() == repo


def test_an_explicit_demo_dataset_keeps_its_truth(tmp_path):
    root = make_dataset(tmp_path / "demo" / "ImageNet-Subset")
    assert get_config("smoke", data_root=root).truth_root is None
    (tmp_path / "demo" / "demo_info.json").write_text("{}")
    assert get_config("smoke", data_root=root).truth_root == root.resolve().parent / "truth"
