"""The classifier zoo: LeNet-style, ResNet-18/50, VGG-16/19 (BN) and Inception-v3-style networks
in plain PyTorch, width-scalable, with a resumable training loop and safetensors checkpoints.

    model = create_model("resnet18", num_classes=10, in_channels=1, image_size=28)
    result = train_model(model, train, test, default_train_config("resnet18"), checkpoint_path=...)
    save_model(model, Path("runs/zoo/resnet18"), card={...})
    model, card = load_model(Path("runs/zoo/resnet18"))

ResNet, VGG, Inception and LeNet models expose `forward_features(x) -> list[Tensor]` (per-stage
feature maps, shallow to deep).
"""

from advforensics.models import inception, lenet, resnet, vgg  # noqa: F401  (registration)
from advforensics.models.base import (
    MODELS,
    ModelConfig,
    ZooModel,
    build_model,
    count_parameters,
    create_model,
    default_width,
    list_models,
)
from advforensics.models.checkpoint import load_model, read_card, save_model, weights_paths
from advforensics.models.training import (
    DEFAULT_TRAIN_CONFIGS,
    TrainConfig,
    TrainResult,
    default_train_config,
    evaluate,
    predict,
    train_model,
)
from advforensics.models.zoo_training import ZooTraining, train_zoo_model

__all__ = [
    "MODELS", "ModelConfig", "ZooModel", "build_model", "count_parameters", "create_model",
    "default_width", "list_models", "load_model", "read_card", "save_model", "weights_paths",
    "DEFAULT_TRAIN_CONFIGS", "TrainConfig", "TrainResult", "default_train_config", "evaluate",
    "predict", "train_model", "ZooTraining", "train_zoo_model",
]
