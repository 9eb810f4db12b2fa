"""Export a checkpoint for deployment: a plain network (masks folded into the weights, BN
optionally folded into convs) as TorchScript, ``torch.export`` or ONNX, checked against the
checkpoint and described by a model card.

    from sparsetrain.export import export_checkpoint
    res = export_checkpoint("runs/x/best.pt", "pt2", fold_bn=True)   # exports/x-best.pt2
"""

from sparsetrain.export._export import (
    ExportCheckError,
    ExportResult,
    default_out,
    export_checkpoint,
)
from sparsetrain.export.formats import FORMATS, get_format, list_formats
from sparsetrain.export.plain import fold_batchnorm, plain_model

__all__ = [
    "FORMATS",
    "ExportCheckError",
    "ExportResult",
    "default_out",
    "export_checkpoint",
    "fold_batchnorm",
    "get_format",
    "list_formats",
    "plain_model",
]
