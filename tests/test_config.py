import json
import shutil
from pathlib import Path

import pytest

from helpers.config import PRESETS, Config, get_config, project_root
from tests.test_data import make_dataset


def _preset_value(preset: str, key: str):
    """What a preset runs with: its own setting, else the Config default."""
    return PRESETS[preset].get(key, getattr(Config(), key))


def test_smoke_takes_the_cpu_presets_path():
    """The notebook tests (smoke) run the code `make run` (cpu) runs: the final fit and the kept epoch."""
    for key in ("final_fit", "final_fit_fraction", "select_best_epoch"):
        assert _preset_value("smoke", key) == _preset_value("cpu", key), key
    for preset in PRESETS:  # the real-photo finding (README), carried over to the gpu preset
        assert _preset_value(preset, "select_best_epoch") is False, preset
        assert _preset_value(preset, "ema_decay") == 0.0, preset  # the weight EMA lost there too
    assert _preset_value("cpu", "final_fit") is True and _preset_value("cpu", "final_fit_fraction") == 0.5


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


def test_no_data_falls_back_to_demo(monkeypatch, tmp_path):
    import helpers.discovery as discovery

    monkeypatch.setattr(discovery, "KAGGLE_INPUT", tmp_path / "k")
    monkeypatch.setattr(discovery, "COLAB_CONTENT", tmp_path / "c")
    monkeypatch.setattr(discovery, "COLAB_DRIVE", tmp_path / "c" / "drive" / "MyDrive")
    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path))
    monkeypatch.delenv("IMSUB_DATA_ROOT", raising=False)
    cfg = get_config("smoke", prepare_data=False)
    assert cfg.data_source == "demo"
    assert cfg.data_root == tmp_path / "data" / "demo" / "ImageNet-Subset"
    assert cfg.truth_root == tmp_path / "data" / "demo" / "truth"
    assert cfg.run_dir == tmp_path / "runs" / cfg.dataset_tag / "smoke"
    assert cfg.dataset_tag.startswith("demo-")


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


def test_runs_are_kept_per_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path / "repo"))
    real = make_dataset(tmp_path / "a" / "ImageNet-Subset")
    demo = make_dataset(tmp_path / "demo" / "ImageNet-Subset", wnids=("n01443537", "n01491361"))
    (tmp_path / "demo" / "demo_info.json").write_text("{}")
    cfg_real, cfg_demo = get_config("gpu", data_root=real), get_config("gpu", data_root=demo)
    assert cfg_real.run_dir == tmp_path / "repo" / "runs" / cfg_real.dataset_tag / "gpu"
    # the default start follows 02's check; a forced start is another run: its own folder
    assert cfg_real.init == "auto" and get_config("gpu", data_root=real, init="scratch").run_dir == cfg_real.run_dir.with_name("gpu-scratch")
    assert get_config("gpu", data_root=real, init="ssl").run_dir == cfg_real.run_dir.with_name("gpu-ssl")
    assert cfg_real.dataset_tag.startswith("ImageNet-Subset-") and cfg_demo.dataset_tag.startswith("demo-")
    assert cfg_real.run_dir != cfg_demo.run_dir
    # the same data elsewhere (Drive, /content, /kaggle/input) is the same run: its checkpoints are found
    copy = shutil.copytree(real, tmp_path / "b" / "ImageNet-Subset")
    assert get_config("gpu", data_root=copy).run_dir == cfg_real.run_dir
    assert get_config("cpu", data_root=real).run_dir == cfg_real.run_dir.with_name("cpu")
    # an explicit run_dir (the runner's --out) and an explicit tag are kept
    assert get_config("gpu", data_root=real, run_dir=tmp_path / "out").run_dir == tmp_path / "out"
    assert get_config("gpu", data_root=real, dataset_tag="mine").run_dir.parent.name == "mine"


def test_mirror_dir_is_per_run_and_restores_a_new_session(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path / "repo"))
    data = make_dataset(tmp_path / "ImageNet-Subset")
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    monkeypatch.setenv("IMSUB_MIRROR_DIR", str(drive / "imsub"))
    cfg = get_config("gpu", data_root=data)
    assert cfg.mirror_dir == drive / "imsub" / cfg.dataset_tag / "gpu"
    assert f"mirror_dir: {cfg.mirror_dir}" in cfg.summary()
    assert "resume state at most every 110 s" in cfg.summary() and f"run_dir: {cfg.run_dir}" in cfg.summary()
    # what an earlier session left on Drive comes back, except the large resume states (fetched on resume)
    cfg.mirror_dir.mkdir(parents=True)
    for name in ("classifier_baseline.pt", "classifier_baseline.resume.pt", "summary.json"):
        (cfg.mirror_dir / name).write_text(name)
    again = get_config("gpu", data_root=data)
    assert sorted(p.name for p in again.run_dir.iterdir()) == ["classifier_baseline.pt", "summary.json"]
    assert "restored 2 files" in capsys.readouterr().out
    # Drive not mounted: a clear error rather than a local folder that looks like Drive
    monkeypatch.setenv("IMSUB_MIRROR_DIR", str(tmp_path / "content" / "drive" / "MyDrive" / "imsub"))
    with pytest.raises(FileNotFoundError, match=r"IMSUB_MIRROR_DIR=.*MyDrive.*does not exist.*mount Drive"):
        get_config("gpu", data_root=data)
    monkeypatch.delenv("IMSUB_MIRROR_DIR")
    assert "mirror_dir: none: checkpoints stay on this machine" in get_config("gpu", data_root=data).summary()


def test_record_is_mirrored(monkeypatch, tmp_path):
    from helpers import pipeline

    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path / "repo"))
    cfg = get_config("smoke", data_root=make_dataset(tmp_path / "ImageNet-Subset"), mirror_dir=tmp_path / "m")
    pipeline.record(cfg, classifier="classifier_baseline")
    assert json.loads((cfg.mirror_dir / "summary.json").read_text()) == {"classifier": "classifier_baseline"}


def test_summary_command_and_the_runner_find_the_run(monkeypatch, tmp_path, capsys):
    from helpers import pipeline
    from helpers.__main__ import main
    from helpers.runner import run_settings

    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path / "repo"))
    data = make_dataset(tmp_path / "ImageNet-Subset")
    monkeypatch.setenv("IMSUB_DATA_ROOT", str(data))
    monkeypatch.setenv("IMSUB_PRESET", "gpu")
    pipeline.record(get_config(), classifier="classifier_pseudo_r1", stage_seconds={"01_classifier": 3.0})
    assert main(["summary"]) == 0  # `python -m helpers summary` reads runs/<dataset>/gpu/summary.json
    assert "classifier_pseudo_r1" in capsys.readouterr().out
    # the headless runner's --out names the run folder itself, for every notebook it starts
    for key, value in run_settings("gpu", str(data), str(tmp_path / "out")).items():
        monkeypatch.setenv(key, value)
    cfg = get_config()
    assert cfg.run_dir == tmp_path / "out" / "runs" / cfg.dataset_tag / "gpu"  # per dataset, as by default
    pipeline.record(cfg, classifier="classifier_out")
    monkeypatch.setenv("IMSUB_INIT", "scratch")  # another start, another run folder, with --out too
    assert get_config().run_dir == tmp_path / "out" / "runs" / cfg.dataset_tag / "gpu-scratch"
    monkeypatch.delenv("IMSUB_INIT")
    monkeypatch.delenv("IMSUB_RUNS_DIR")  # a new shell: `summary --out` finds the run by itself
    assert main(["summary", "--out", str(tmp_path / "out")]) == 0
    assert "classifier_out" in capsys.readouterr().out


def test_the_main_job_skips_side_runs_unless_asked(monkeypatch):
    """`python -m helpers run` sets IMSUB_SIDE_RUNS=0; --side-runs or a user's IMSUB_SIDE_RUNS=1 keeps them."""
    from helpers.runner import run_settings

    monkeypatch.delenv("IMSUB_SIDE_RUNS", raising=False)
    assert run_settings("cpu")["IMSUB_SIDE_RUNS"] == "0"
    assert run_settings("cpu", side_runs=True)["IMSUB_SIDE_RUNS"] == "1"
    monkeypatch.setenv("IMSUB_SIDE_RUNS", "1")  # the user's setting stands
    assert "IMSUB_SIDE_RUNS" not in run_settings("cpu")
    monkeypatch.setenv("IMSUB_SIDE_RUNS", "0")
    assert run_settings("cpu", side_runs=True)["IMSUB_SIDE_RUNS"] == "1"  # the flag wins over the environment
    assert get_config("smoke", prepare_data=False).side_runs is False
    monkeypatch.delenv("IMSUB_SIDE_RUNS")
    assert get_config("smoke", prepare_data=False).side_runs is True  # notebooks in JupyterLab run them
