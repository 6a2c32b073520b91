"""benchmarks/seed_study.py: how a variant's command line becomes its environment."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_study.py"
_spec = importlib.util.spec_from_file_location("seed_study", _path)
seed_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_study)


def test_variant_overrides_get_the_prefix_and_common_ones_apply_to_every_variant():
    assert seed_study.parse_variant("ssl") == ("ssl", {})
    assert seed_study.parse_variant("a:consistency_threshold=adaptive, IMSUB_EMA_DECAY=0.99") == (
        "a", {"IMSUB_CONSISTENCY_THRESHOLD": "adaptive", "IMSUB_EMA_DECAY": "0.99"})
    envs = dict(seed_study.variant_envs(["main", "da:DISTRIBUTION_ALIGNMENT=1", "mu:UNLABELED_RATIO=3"],
                                        "DISTRIBUTION_ALIGNMENT=0"))
    assert envs["main"] == {"IMSUB_DISTRIBUTION_ALIGNMENT": "0"}
    assert envs["da"] == {"IMSUB_DISTRIBUTION_ALIGNMENT": "1"}  # a variant's own value wins
    assert envs["mu"] == {"IMSUB_DISTRIBUTION_ALIGNMENT": "0", "IMSUB_UNLABELED_RATIO": "3"}
    assert dict(seed_study.variant_envs(["x:EPOCHS=2"])) == {"x": {"IMSUB_EPOCHS": "2"}}
