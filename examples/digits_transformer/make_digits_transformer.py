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

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 60
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-2
OPSET = 17
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread plus deterministic kernels: the run gives the same weights
    # whatever the number of cores of the machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


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


def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, SEQ, FEATURES)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(x_test, dtype=np.float32),
        y_train.astype(np.int64),
        y_test.astype(np.int64),
    )


def train(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray) -> None:
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    n = xt.shape[0]
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / n:.4f}", flush=True)


def export_onnx(model: nn.Module, path: Path) -> None:
    import onnx

    model.eval()
    dummy = torch.zeros(1, SEQ, FEATURES, dtype=torch.float32)
    # The legacy TorchScript exporter (dynamo=False) writes opset 17 directly
    # (the dynamo exporter would need onnxscript and a version conversion).
    # The MHA fast path (a fused native op in eval mode) has no ONNX export:
    # turn it off so attention is written as MatMul/Softmax.
    torch.backends.mha.set_fastpath_enabled(False)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        export_params=True,
        training=torch.onnx.TrainingMode.EVAL,
    )
    # Make sure every weight is inline in the .onnx file (no external data).
    m = onnx.load(str(path), load_external_data=True)
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name} stored as external data")
    m.producer_name = "kiln-examples-digits_transformer"
    onnx.save_model(m, str(path), save_as_external_data=False)
    stray = path.with_name(path.name + ".data")
    if stray.exists():
        stray.unlink()


def check_onnx(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    inp = m.graph.input[0]
    out = m.graph.output[0]
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert inp.name == "input" and in_dims == ["batch", SEQ, FEATURES], (inp.name, in_dims)
    assert out.name == "logits" and out_dims == ["batch", 10], (out.name, out_dims)
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    assert opset.get("ai.onnx") == OPSET, opset
    ops = sorted({n.op_type for n in m.graph.node})
    return {"op_types": ops, "opset": OPSET, "input_shape": in_dims, "output_shape": out_dims}


def main() -> int:
    seed_everything(SEED)
    x_train, x_test, y_train, y_test = load_data()
    print(f"train {x_train.shape}, test {x_test.shape}", flush=True)

    model = DigitsTransformer()
    print(f"parameters: {sum(p.numel() for p in model.parameters())}", flush=True)
    train(model, x_train, y_train)
    model.eval()

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_pred = torch_logits.argmax(1)
    torch_acc = float((torch_pred == y_test).mean())
    print(f"torch top-1 accuracy: {torch_acc:.4f}", flush=True)

    export_onnx(model, ONNX_PATH)
    info = check_onnx(ONNX_PATH)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"input": x_test})
    ort_pred = ort_logits.argmax(1)
    ort_acc = float((ort_pred == y_test).mean())
    max_abs_diff = float(np.abs(ort_logits - torch_logits).max())
    agree = int((ort_pred == torch_pred).sum())
    print(f"onnxruntime top-1 accuracy: {ort_acc:.4f}", flush=True)
    print(f"max |logit diff| torch vs ort: {max_abs_diff:.3e}", flush=True)
    if agree != len(y_test) or ort_acc != torch_acc:
        raise RuntimeError(
            f"torch and onnxruntime disagree on {len(y_test) - agree} samples"
        )
    if max_abs_diff > 1e-3:
        raise RuntimeError(f"logits differ by {max_abs_diff}")

    # Also run a batch of a different size, to exercise the symbolic dim.
    (one,) = sess.run(["logits"], {"input": x_test[:1]})
    assert one.shape == (1, 10)
    assert np.abs(one - ort_logits[:1]).max() <= 1e-4

    np.savez(OUT_DIR / "digits_test.npz", input=x_test, labels=y_test)
    np.savez(OUT_DIR / "digits_calib.npz", input=x_train[:N_CALIB].copy())

    import onnx

    metrics = {
        "model": ONNX_PATH.name,
        "torch_top1_accuracy": torch_acc,
        "onnxruntime_top1_accuracy": ort_acc,
        "torch_ort_prediction_agreement": agree,
        "torch_ort_max_abs_logit_diff": max_abs_diff,
        "num_test_samples": int(len(y_test)),
        "num_train_samples": int(len(y_train)),
        "num_calib_samples": N_CALIB,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "seed": SEED,
        "epochs": EPOCHS,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "opset": info["opset"],
        "op_types": info["op_types"],
        "onnx_file_bytes": ONNX_PATH.stat().st_size,
    }
    with open(OUT_DIR / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))

    if torch_acc < 0.95:
        print("accuracy is below 0.95", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
