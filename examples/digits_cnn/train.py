#!/usr/bin/env python3
"""Train a small CNN on scikit-learn's bundled digits data and export it to ONNX.

Run from anywhere (outputs are written next to this file):

    /tmp/trainvenv/bin/python examples/digits_cnn/train.py

Outputs (all in this directory):
    digits_cnn.onnx   opset 17, input "input" [batch,1,8,8] float32,
                      output "logits" [batch,10] float32, weights inline
    digits_test.npz   input  float32 [N,1,8,8]  held-out test images
                      labels int64   [N]        their labels
    digits_calib.npz  input  float32 [200,1,8,8] training images for INT8 calibration
    metrics.json      accuracies (torch and onnxruntime), sample counts, versions, seed

The data set ships inside scikit-learn (no download).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

# This script is run as a file, so examples/ (which holds the shared digits_training.py) is not on
# sys.path by itself: put it there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import digits_training as dt  # noqa: E402

SEED = 0
EPOCHS = 30
BATCH_SIZE = 64
LR = 3e-3
N_CALIB = 200
SAMPLE_SHAPE = (1, 8, 8)  # one channel of 8x8 pixels
OUT_DIR = Path(__file__).resolve().parent
ONNX_PATH = OUT_DIR / "digits_cnn.onnx"


class DigitsCNN(nn.Module):
    """8x8x1 -> 10 logits. About 14k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),  # global average pool -> 32x1x1
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def main() -> int:
    dt.seed_everything(SEED)
    data = dt.load_data(SAMPLE_SHAPE)

    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    dt.train(model, opt, data, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED, print_every=5)
    torch_acc = dt.evaluate_export_and_write(
        model,
        ONNX_PATH,
        data,
        sample_shape=SAMPLE_SHAPE,
        producer_name="kiln-examples-digits_cnn",
        n_calib=N_CALIB,
        seed=SEED,
        epochs=EPOCHS,
    )

    if torch_acc <= 0.95:
        print("accuracy is not above 0.95", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
