"""The models rgtp ships: ViTDet-B with its Faster R-CNN head (:mod:`~rgtp.models.vitdet`, :mod:`~rgtp.models.frcnn`),
ViViT-B's factorised encoder (:mod:`~rgtp.models.vivit`), their building blocks (:mod:`~rgtp.models.layers`), the
attention math every runner uses (:mod:`~rgtp.models.attention`) and the block protocol through which the methods
drive any model (:mod:`~rgtp.models.protocol`). Models know nothing about pruning."""
