"""The input normalisations of the registry's models: each model's timm weights were trained with one of these
(timm's `pretrained_cfg` mean and std, pinned per model by `tests/test_models_normalisation.py`)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's "inception" statistics: most of its CoAtNets and vit_base_patch16_224's default (augreg) weights.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
