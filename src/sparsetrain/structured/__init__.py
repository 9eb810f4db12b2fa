"""Structured (channel) pruning: EagleEye (Li et al., "EagleEye: Fast Sub-net Evaluation for
Efficient Neural Network Pruning", ECCV 2020).

Pipeline (DESIGN.md §3.6)::

    groups = prunable_groups(model)                      # Torch-Pruning dependency graph
    sampler = StrategySampler(MacsModel.build(model, groups), target=0.5)
    pruned = prune_model(model, sampler.sample(0).ratios)  # L1 filter norm, a new module
    adaptive_bn(pruned, train_batches)                   # re-estimate BN statistics
    result = eagleeye_search(model, train_batches, holdout, "runs/x/search")
    save_pruned(pruned, "pruned.pt"); load_pruned("pruned.pt")  # weights_only loading

The whole workflow lives here too: ``structured.eagleeye.run_eagleeye`` (search, baselines,
correlation study, fine-tuning; ``sparsetrain prune eagleeye``) and
``structured.finetune.finetune_pruned`` (training a channel-pruned model with the engine). They
are not imported by this package's ``__init__`` because they pull in the training engine.
The pruned-model format (save/load of the structure) has one home, ``structured.io``, used by
checkpoints (``sparsetrain.loading.load_model``) and by ``sparsetrain export`` alike.
"""

from __future__ import annotations

from sparsetrain.structured.adaptive_bn import adaptive_bn
from sparsetrain.structured.correlate import (
    correlation_study,
    kendall_tau_b,
    pearson,
    spearman,
)
from sparsetrain.structured.groups import (
    IMPORTANCES,
    ChannelGroup,
    accumulate_gradients,
    apply_kept,
    kept_count,
    prunable_groups,
    prune_model,
)
from sparsetrain.structured.io import (
    build_pruned,
    load_pruned,
    model_from_structure,
    pruned_checkpoint,
    save_pruned,
    structure_of,
)
from sparsetrain.structured.latency import LatencyModel
from sparsetrain.structured.macs import MacsModel, macs_params
from sparsetrain.structured.sampler import Strategy, StrategySampler, uniform_strategy
from sparsetrain.structured.search import (
    SearchResult,
    abn_batches,
    eagleeye_search,
    eval_batches,
    holdout_split,
    top1,
)

__all__ = [
    "IMPORTANCES",
    "ChannelGroup",
    "LatencyModel",
    "MacsModel",
    "SearchResult",
    "Strategy",
    "StrategySampler",
    "abn_batches",
    "accumulate_gradients",
    "adaptive_bn",
    "apply_kept",
    "build_pruned",
    "correlation_study",
    "eagleeye_search",
    "eval_batches",
    "holdout_split",
    "kendall_tau_b",
    "kept_count",
    "load_pruned",
    "macs_params",
    "model_from_structure",
    "pearson",
    "prunable_groups",
    "prune_model",
    "pruned_checkpoint",
    "save_pruned",
    "spearman",
    "structure_of",
    "top1",
    "uniform_strategy",
]
