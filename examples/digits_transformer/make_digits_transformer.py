#!/usr/bin/env python3
"""Train a small transformer encoder on scikit-learn's bundled digits data and export it to ONNX.

Each 8x8 digit is read as a sequence of 8 tokens (its rows), each of 8 features.

Run from anywhere (outputs are written next to this file):

    /tmp/trainvenv/bin/python examples/digits_transformer/make_digits_transformer.py

Outputs (all in this directory):
    digits_transformer.onnx  opset 17, input "input" [batch,8,8] float32 (rows x pixels),
                             output "logits" [batch,10] float32, weights inline
    digits_test.npz          input  float32 [N,8,8]  held-out test images
                             labels int64   [N]      their labels
    digits_calib.npz         input  float32 [200,8,8] training images for INT8 calibration
    metrics.json             accuracies (torch and onnxruntime), sample counts, versions, seed

The data set ships inside scikit-learn (no download). The split, scaling and calibration images are
those of examples/digits_cnn (the same images, shaped [N,8,8] instead of [N,1,8,8]).
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
EPOCHS = 60
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-2
N_CALIB = 200
SEQ = 8  # tokens: the image's rows
FEATURES = 8  # per token: the row's pixels
D_MODEL = 32
HEADS = 4
FFN = 64
LAYERS = 2
DROPOUT = 0.1
OUT_DIR = Path(__file__).resolve().parent
ONNX_PATH = OUT_DIR / "digits_transformer.onnx"


class DigitsTransformer(nn.Module):
    """[batch, 8 rows, 8 pixels] -> 10 logits. About 19k parameters.

    Linear token embedding + learned position embedding, two post-norm encoder layers
    (4-head self-attention, LayerNorm, GELU feed-forward), mean over the tokens, linear classifier.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, D_MODEL)
        self.position = nn.Parameter(torch.zeros(1, SEQ, D_MODEL))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=D_MODEL,
            nhead=HEADS,
            dim_feedforward=FFN,
            dropout=DROPOUT,
            activation="gelu",
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=LAYERS, enable_nested_tensor=False)
        self.classifier = nn.Linear(D_MODEL, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.position
        x = self.encoder(x)
        return self.classifier(x.mean(dim=1))


def main() -> int:
    dt.seed_everything(SEED)
    data = dt.load_data((SEQ, FEATURES))

    model = DigitsTransformer()
    num_parameters = sum(p.numel() for p in model.parameters())
    print(f"parameters: {num_parameters}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    dt.train(model, opt, data, epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED, print_every=10)
    torch_acc = dt.evaluate_export_and_write(
        model,
        ONNX_PATH,
        data,
        sample_shape=(SEQ, FEATURES),
        producer_name="kiln-examples-digits_transformer",
        n_calib=N_CALIB,
        seed=SEED,
        epochs=EPOCHS,
        extra_metrics={"num_parameters": int(num_parameters)},
        disable_mha_fastpath=True,
        check_batch_of_one_logits=True,
    )

    if torch_acc < 0.95:
        print("accuracy is below 0.95", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
