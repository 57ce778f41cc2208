"""How onnxruntime multiplies many 3x3 rotation matrices, by memory layout, side by side in one run.

The step graph's pose decoding multiplies one 3x3 matrix per character and joint several times a step (bone
alignment, parent-relative rotations, the root's turn). Laid out batch first, (N, J, 3, 3), onnxruntime runs one
tiny GEMM per matrix for a MatMul, and element-wise products broadcast over the small trailing axes; laid out
batch last, (3, 3, N * J), each entry of the product is three multiply-adds over long contiguous rows; a
batch-first graph can also transpose its operands to that layout for the product and back. Each row times one
product of N x 22 matrix pairs in each formulation (1 thread) and prints the ratio of each to the batch-first
MatMul of the same run.

    python benchmarks/rotation_layout.py [--sizes 1,1024,4096] [--joints 22]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.export import OPSET  # noqa: E402

JOINTS = 22


class BatchFirstMatMul(torch.nn.Module):
    """(N, J, 3, 3) @ (N, J, 3, 3): one MatMul node."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class BatchFirstElementwise(torch.nn.Module):
    """(N, J, 3, 3) products as three broadcast multiply-adds over the trailing axes."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a[..., :, 0:1] * b[..., 0:1, :] + a[..., :, 1:2] * b[..., 1:2, :] + a[..., :, 2:3] * b[..., 2:3, :]


class BatchLast(torch.nn.Module):
    """(3, 3, M) products, the matrices' entries first and the batch last: multiply-adds over rows of M."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = a.unsqueeze(2) * b.unsqueeze(0)  # (i, k, j, M)
        return p[:, 0] + p[:, 1] + p[:, 2]


class BatchFirstViaLast(torch.nn.Module):
    """(N, J, 3, 3) products computed batch last: transposed in, multiplied as BatchLast, transposed back (a
    drop-in for a batch-first graph)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        c = BatchLast()(a.permute(2, 3, 0, 1).reshape(3, 3, -1), b.permute(2, 3, 0, 1).reshape(3, 3, -1))
        return c.reshape(3, 3, n, -1).permute(2, 3, 0, 1)


def session(module: torch.nn.Module, example: torch.Tensor, batch_axis: int, folder: Path) -> ort.InferenceSession:
    """An onnxruntime session (1 thread) of module exported with a dynamic batch axis."""
    path = folder / f"{type(module).__name__}.onnx"
    axes = {name: {batch_axis: "n"} for name in ("a", "b", "c")}
    with warnings.catch_warnings():  # the TorchScript exporter, as trainer.export uses it, warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example, example), str(path), input_names=["a", "b"], output_names=["c"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(run, seconds: float = 1.0) -> float:
    """Milliseconds per call of run, called back to back for about seconds."""
    run()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def main() -> int:
    """Time the three layouts at each size and print them with their ratios to the batch-first MatMul."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,1024,4096", help="characters per call, comma-separated (default %(default)s)")
    ap.add_argument("--joints", type=int, default=JOINTS, help="matrices per character (default %(default)s)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="mvae-layout-") as tmp:
        folder = Path(tmp)
        first = torch.zeros(2, args.joints, 3, 3)
        sessions = {"batch-first MatMul": (session(BatchFirstMatMul(), first, 0, folder), False),
                    "batch-first element-wise": (session(BatchFirstElementwise(), first, 0, folder), False),
                    "transposed to batch-last": (session(BatchFirstViaLast(), first, 0, folder), False),
                    "batch-last element-wise": (session(BatchLast(), torch.zeros(3, 3, 2 * args.joints), 2, folder),
                                                True)}
        print(f"one product of N x {args.joints} pairs of 3x3 matrices, onnxruntime {ort.__version__}, 1 thread, "
              f"{os.cpu_count()} CPUs")
        print(f"{'characters N':>12}  " + "  ".join(f"{name:>26}" for name in sessions))
        for n in sizes:
            a, b = (rng.standard_normal((n, args.joints, 3, 3)).astype(np.float32) for _ in range(2))
            want = a @ b
            times = {}
            for name, (sess, last) in sessions.items():
                feed = ({"a": np.ascontiguousarray(a.transpose(2, 3, 0, 1).reshape(3, 3, -1)),
                         "b": np.ascontiguousarray(b.transpose(2, 3, 0, 1).reshape(3, 3, -1))} if last
                        else {"a": a, "b": b})
                got = sess.run(None, feed)[0]
                got = got.reshape(3, 3, n, args.joints).transpose(2, 3, 0, 1) if last else got
                if not np.allclose(got, want, atol=1e-4):
                    raise SystemExit(f"{name} gives a different product")
                times[name] = timed(lambda: sess.run(None, feed))
            base = times["batch-first MatMul"]
            print(f"{n:>12}  " + "  ".join(f"{t:>9.4f} ms ({t / base:4.2f}x)".rjust(26) for t in times.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
