#!/usr/bin/env python3
"""Train a small CNN on scikit-learn's digits with MXNet Gluon and export it (symbol JSON + .params).

Runs in the MXNet side virtualenv (tests/mxnet/make_venv.sh), from anywhere:

    .venv-mxnet/bin/python examples/mxnet_digits/train.py

Writes next to this file: digits-symbol.json and digits-0000.params (Gluon `export`), digits_test.npz
(`data` float32 [450,1,8,8], `labels` int64 [450], the held-out split) and metrics.json (MXNet's
held-out accuracy, which kiln's compiled artifact must reproduce exactly).
Split: train_test_split(test_size=0.25, random_state=0, stratify=y) on load_digits, pixels / 16.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: the same weights on any machine
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

SEED, EPOCHS, BATCH_SIZE, LEARNING_RATE = 0, 30, 64, 3e-3
OUT_DIR = Path(__file__).resolve().parent


def build() -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(nn.Conv2D(16, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
            nn.Conv2D(32, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
            nn.MaxPool2D(2),
            nn.Conv2D(32, 3, padding=1, activation="relu"),
            nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(10))
    return net


def main() -> None:
    mx.random.seed(SEED)
    np.random.seed(SEED)
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0,
                                                        stratify=digits.target)
    net = build()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": LEARNING_RATE})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(SEED)
    for _ in range(EPOCHS):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            with autograd.record():
                loss = loss_fn(net(mx.nd.array(x_train[batch])), mx.nd.array(y_train[batch]))
            loss.backward()
            trainer.step(len(batch))
    logits = net(mx.nd.array(x_test)).asnumpy()
    accuracy = float((logits.argmax(axis=1) == y_test).mean())
    net.export(str(OUT_DIR / "digits"))
    np.savez(OUT_DIR / "digits_test.npz", data=x_test, labels=y_test.astype(np.int64))
    metrics = {"mxnet_test_accuracy": accuracy, "num_test_samples": len(y_test), "num_train_samples": len(y_train),
               "seed": SEED, "epochs": EPOCHS, "mxnet_version": mx.__version__, "input": "data: float32[N,1,8,8]"}
    (OUT_DIR / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
