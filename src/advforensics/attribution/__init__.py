"""Passive attribution (MTAA, Guo et al. arXiv 2302.14059): attack corpus, multi-task attributor, baselines.

    attributor = Attributor.load("runs/mtaa.safetensors"); answers = attributor.predict("evidence.png")

Import the submodules for the full API:
    grid      GridSpec / AttackSpec, default_grid() (paper Table 1), small_grid(), field_grid(), heldout_grid()
    corpus    load_corpus, Corpus, split_by_clean_image, attribution_splits (the corpus on disk and in memory)
    corpus_generation  generate_corpus, CorpusConfig, run_grid_attack (making a corpus: attacks, resume)
    mtaa      MTAA, MTAAConfig, UncertaintyWeighting, PerturbationExtractor
    baselines SingleLabelNet, single_task_config, ablation_config
    side      pixel_histogram, VictimProbe (side features, ours: not in the paper)
    victims   load_victims, probe_settings
    build     build_corpus (the `attribution corpus` job from names and paths)
    train     TrainConfig, train_attributor
    card      AttributorCard, save_attributor, load_attributor, peek_card (the trained file)
    openset   OpenSetRule, fit_open_set ("not adversarial", "unknown attack", calibrated probabilities)
    answers   attribute, Attribution (answers for images)
    field     Truth, field_metrics, field_report (metrics with intervals on labelled evidence)
    evaluate  evaluate_attributor, delta_mtl, write_report (the paper's tables)
"""

from advforensics.attribution.attributor import Attributor
from advforensics.attribution.corpus import load_corpus, split_by_clean_image
from advforensics.attribution.corpus_generation import CorpusConfig, generate_corpus
from advforensics.attribution.evaluate import delta_mtl, evaluate_attributor, write_report
from advforensics.attribution.answers import Attribution, attribute
from advforensics.attribution.field import Truth, field_metrics, field_report
from advforensics.attribution.grid import AttackSpec, GridSpec, default_grid, small_grid
from advforensics.attribution.mtaa import MTAA, MTAAConfig
from advforensics.attribution.card import AttributorCard, load_attributor, save_attributor
from advforensics.attribution.train import TrainConfig, train_attributor
from advforensics.attribution.victims import load_victims

__all__ = ["Attributor", "AttackSpec", "GridSpec", "default_grid", "small_grid", "CorpusConfig", "generate_corpus", "load_corpus",
           "split_by_clean_image", "MTAA", "MTAAConfig", "TrainConfig", "train_attributor", "save_attributor",
           "load_attributor", "AttributorCard", "evaluate_attributor", "delta_mtl", "write_report", "load_victims", "Attribution",
           "Truth", "attribute", "field_metrics", "field_report"]
