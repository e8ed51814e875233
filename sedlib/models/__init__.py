"""Models: the backbone interface and its kinds (ATST-Frame, BEATs), ATST-SED CRNN, checkpoints, long-audio windowing."""

from __future__ import annotations

from sedlib.models.atst_frame import ATSTFrame
from sedlib.models.backbone import Backbone, backbone_definition, build_backbone
from sedlib.models.crnn import CRNN, SEDOutput

__all__ = ["ATSTFrame", "Backbone", "CRNN", "SEDOutput", "backbone_definition", "build_backbone", "build_sed_model"]


def build_sed_model(config: dict, n_classes: int, backbone_file: str | None = None) -> CRNN:
    """CRNN with its backbone from ``config["model"]`` and ``config["frontends"]`` (a validated config:
    schema defaults filled; the backbone is ``model.backbone`` of a run configuration or model file, else the
    first of a workflow configuration's ``model.backbones``).

    The backbone is randomly initialised unless ``backbone_file`` (results/backbone/{name}.pt or an official
    checkpoint layout of its kind) is given, in which case its weights are loaded strictly.
    """
    backbone = build_backbone(config["model"], config["frontends"])
    if backbone_file is not None:
        from sedlib.models.checkpoint import load_backbone_weights

        load_backbone_weights(backbone, backbone_file)
    crnn = config["model"]["crnn"]
    return CRNN(
        n_classes,
        n_mels=config["frontends"]["crnn"]["n_mels"],
        filters=crnn["filters"],
        pooling=crnn["pooling"],
        dropout=crnn["dropout"],
        rnn_hidden=crnn["rnn_hidden"],
        rnn_layers=crnn["rnn_layers"],
        bn_momentum=crnn["bn_momentum"],
        backbone=backbone,
    )
