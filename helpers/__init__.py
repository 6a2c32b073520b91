"""helpers: the reusable code behind the ImageNet-Subset course notebooks.

The map: one module per concern, in the order the notebooks meet them.

    Data
      config           the Config object, presets (smoke / cpu / gpu), IMSUB_* overrides, run folders, seeding
      discovery        finding the data on Kaggle, Colab, Drive or here; a dataset zip extracted once
      data             the data index: annotation JSON + folders -> samples, the stratified validation split
      images           robust image loading (grayscale, CMYK, PNG-as-JPEG, truncated), no EXIF rotation
      masks            mask encoding: id = R + G*256, class k <-> id k + 1, ignore 1000; PNG read/write
      cache            the decoded-image cache: uint8 tensors per split and size, rebuilt when the source changes
      stats            dataset statistics for notebook 00
    Models and training
      augment          batched on-device augmentation: affine warp (image and mask alike), colour, RandAugment, cutout, blur
      models           the ResNet classifier and the U-Net on the same ResNet trunk
      transfer         encoder transfer between classifiers, U-Nets and weight files, with a load report
      engine           the training loop every model uses: schedule, mixed precision, kept epoch, checkpoints, resume
      ema              the exponential moving average of a model's weights
      selfsup          SimCLR pretraining of the encoder from the images alone (notebook 02), `start_encoder` by cfg.init
      probes           frozen-feature checks without training the network: kNN accuracy, linear probe, PCA
      classification   prediction, evaluation, features, and `fit` (the classifier's training task)
      consistency      the FixMatch consistency loss on unlabeled images
      pseudo           offline pseudo-labels: threshold, per-class cap, precision and coverage
      segmentation     the U-Net: build, segmentation loss, `fit_segmenter`, validation
      mask_prediction  from U-Net outputs to masks: flip TTA, mask methods, original-size masks, scoring
      final_fit        the chosen classifier and U-Net trained once more on every labeled image (notebook 05; retrained in the gpu preset, continued in the cpu preset)
      analysis         looking inside a model: per-class table, feature distances, nearest images, layer shapes, per-image IoU
    Results
      metrics          accuracy, confusion matrix, mIoU exactly as the ImageNet-S evaluator, submission scoring
      submission       the atomic submission writer, its validator and command line
      plots            image grids with mask overlays and a class legend, curves, confusion matrices, the browser
    Plumbing (no course ideas inside)
      hardware         device, mixed-precision dtype, memory format
      checkpoints      atomic checkpoint files, safe loading with clear errors, the checkpoint policy and mirror
      fileops          the folder lock of a run, failed-write errors (disk full, read-only), process liveness
      tracking         per-epoch history beside each checkpoint (CSV), TensorBoard, optional W&B, comparing runs
      pipeline         what the notebooks share: run data, model loading, the run's recorded choices
      runner           `python -m helpers run`: the notebooks executed headless (one run per run folder), the summary
      demo             the synthetic demo dataset generator (`python -m helpers.demo`)
"""
from .config import Config, get_config, seed_everything
from .data import DatasetIndex, Sample, load_index, split_labeled

__version__ = "0.1.0"
__all__ = ["Config", "DatasetIndex", "Sample", "get_config", "load_index", "seed_everything", "split_labeled"]
