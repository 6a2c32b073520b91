"""helpers: the reusable code behind the ImageNet-Subset course notebooks.

One module per concern: `config` (presets, data discovery), `data` (the data index), `images`
(robust image loading), `masks` (mask encoding), `cache` (decoded-image cache), `demo` (the
generated demo dataset), `augment`, `models`, `training`, `pseudo`, `metrics`, `plots`, `submission`.
"""
from .config import Config, get_config, seed_everything
from .data import DatasetIndex, Sample, load_index, split_labeled

__version__ = "0.1.0"
__all__ = ["Config", "DatasetIndex", "Sample", "get_config", "load_index", "seed_everything", "split_labeled"]
