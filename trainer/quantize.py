"""The int8 step graph: decoder.onnx with its network's weights quantised per output channel (decoder-int8.onnx).

Only the network's large layers (in every node the `next_frame` output depends on: a mixture's experts) are
quantised; a mixture's small gate and the pose decoding after the network (root integration, 6D to quaternions,
forward kinematics, the foot lock) stay float32. Each weight matrix becomes int8
with one scale per output column, and onnxruntime quantises each layer's input to uint8 on the fly
(onnxruntime.quantization.quantize_dynamic: DynamicQuantizeLinear + MatMulInteger, which onnxruntime fuses;
measured faster here than weight-only MatMulNBits, which is as fast at one character but slower than float32 at
a thousand).
The int8 weights are a quarter of the float32 bytes, which is what a step at a few characters waits on.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_path, atomic_write_text, folder_lock
from runtime.footlock import idle_lock_inputs
from runtime.model import INT8_FILE, FLOAT_FILE, ModelError, load_model, sha256_file

VERIFY_STEPS = 300
# Weight matrices smaller than this stay float32: a mixture's gate (which picks the experts) is one, and its int8
# rounding shifted the default model's gait (twice the jogging, 5% less standing); the experts' layers, which hold
# nearly all the bytes a step reads, are far larger.
MIN_QUANTISED = 1 << 16
# Largest one-step difference of the int8 next frame from the float32 one (standard deviations of the data) that
# export accepts; the default model's is about a quarter of it.
INT8_TOLERANCE = 0.25


def _network_nodes(graph) -> set[str]:
    """Names of the nodes the output next_frame depends on: the network, before any pose decoding."""
    producer = {out: node for node in graph.node for out in node.output}
    wanted, stack = set(), ["next_frame"]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in wanted:
            wanted.add(node.name)
            stack.extend(node.input)
    return wanted


def dense_layers(model) -> list[str]:
    """Rewrite the network's constant-weight Gemm layers of at least MIN_QUANTISED weights as MatMul + Add on a plain
    2-D initializer (what the quantiser recognises); returns the names of those MatMuls."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {out: node for node in g.node for out in node.output}
    network = _network_nodes(g)

    def constant(name: str):
        """The weight behind an input, looking through a Flatten of an initializer (the experts' (in, E, out))."""
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Flatten" and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            return w.reshape(w.shape[0], -1)
        return None

    nodes, targets = [], []
    for node in g.node:
        weight = constant(node.input[1]) if node.name in network and node.op_type in ("Gemm", "MatMul") else None
        if weight is None or weight.ndim != 2 or weight.size < MIN_QUANTISED:
            nodes.append(node)
            continue
        if node.op_type == "MatMul":
            targets.append(node.name)
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        dense = f"{node.name}.weight"
        g.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T if attrs.get("transB", 0) else weight, dtype=np.float32), dense))
        product = f"{node.output[0]}.product"
        nodes.append(helper.make_node("MatMul", [node.input[0], dense], [product], name=f"{node.name}.MatMul"))
        targets.append(f"{node.name}.MatMul")
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.Add"))
        else:
            nodes.append(helper.make_node("Identity", [product], [node.output[0]], name=f"{node.name}.Identity"))
    del g.node[:]
    g.node.extend(nodes)
    _prune(g)
    return targets


def _prune(graph) -> None:
    """Drop nodes and initializers nothing reads any more (the Flattens the rewrite bypassed)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for node in graph.node for i in node.input} | outputs
        dead = [node for node in graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def quantise_step_graph(src: Path, dst: Path) -> int:
    """Write the int8 graph of the float32 step graph src to dst; returns how many layers were quantised."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    targets = dense_layers(model)
    if not targets:
        raise ModelError(f"{src}: found no layer with constant weights before next_frame to quantise")
    with tempfile.TemporaryDirectory(prefix="mvae-int8-") as scratch:
        dense = Path(scratch) / "dense.onnx"
        onnx.save(model, str(dense))
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser suggests a pre-processing pass it does not need
        try:
            # reduce_range: 7-bit weights, so that AVX2's u8 x s8 pair sums cannot saturate int16 (with 8 bits they
            # do now and then, and the next frame was off by a whole standard deviation in places).
            quantize_dynamic(str(dense), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=targets)
        finally:
            logging.getLogger().setLevel(quiet)
    return len(targets)


def compare(folder: Path, steps: int = VERIFY_STEPS, seed: int = 0) -> dict[str, float]:
    """One-step next-frame difference of the int8 graph from the float32 one (standard deviations of the data),
    at every step of a random-latent rollout from every start frame that follows the int8 graph."""
    float32, int8 = load_model(folder), load_model(folder, precision="int8")
    rng = np.random.default_rng(seed)
    cond = float32.normalise(float32.start_frames).reshape(len(float32.start_frames), -1)
    n, f = len(cond), float32.frame_size
    z = np.empty((n, float32.latent_size), np.float32)
    feed = {"origin": np.zeros((n, 3), np.float32), "yaw": np.zeros((n, 1), np.float32),
            "previous_rotations": np.zeros((n, float32.skeleton.n_joints, 4), np.float32),
            **(idle_lock_inputs(float32, n) if float32.foot_lock_in_graph else {})}
    errors = []
    for _ in range(steps):
        float32.sample_latents(rng, z)
        want = float32.decoder.run(["next_frame"], {"z": z, "condition": cond, **feed})[0]
        got = int8.decoder.run(["next_frame"], {"z": z, "condition": cond, **feed})[0]
        errors.append(np.abs(got - want))
        cond = np.concatenate([cond[:, f:], got], axis=1)
    e = np.stack(errors)
    return {"max": float(e.max()), "mean": float(e.mean()), "rms": float(np.sqrt((e ** 2).mean())),
            "steps": steps, "characters": n}


def add_int8(folder: str | Path) -> dict[str, float]:
    """Add decoder-int8.onnx to a model directory and register it in model.json; returns compare()'s figures.

    Refuses (ModelError, nothing changed) when the int8 graph's one-step error exceeds INT8_TOLERANCE.
    """
    folder = Path(folder)
    load_model(folder)  # the float32 directory is sound before anything is added
    with folder_lock(folder):
        meta_path = folder / "model.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        source = meta["files"][FLOAT_FILE]["sha256"]
        with atomic_path(folder / INT8_FILE, suffix=".onnx") as tmp:
            layers = quantise_step_graph(folder / FLOAT_FILE, tmp)
            entry = {"sha256": sha256_file(tmp), "precision": "int8", "quantised_from": source,
                     "graph": f"{meta['files'][FLOAT_FILE].get('graph', 'runtime step')}; the network's {layers} "
                              "weight matrices int8 per output channel, inputs quantised per call (trainer/quantize.py)",
                     "inputs": meta["files"][FLOAT_FILE].get("inputs"), "outputs": meta["files"][FLOAT_FILE].get("outputs")}
            trial = {**meta, "files": {**meta["files"], tmp.name: entry},
                     "precisions": {"float32": FLOAT_FILE, "int8": tmp.name}}
            with tempfile.TemporaryDirectory(prefix="mvae-int8-") as scratch:
                # Compared in a scratch copy naming the temporary file, so the directory is untouched on refusal.
                for name in (FLOAT_FILE, tmp.name):
                    (Path(scratch) / name).symlink_to((folder / name if name == FLOAT_FILE else tmp).resolve())
                (Path(scratch) / "model.json").write_text(json.dumps({**trial, "policies": {}}), encoding="utf-8")
                figures = compare(Path(scratch))
            if not figures["max"] <= INT8_TOLERANCE:
                raise ModelError(f"{folder}: the int8 graph's next frame differs from the float32 one's by up to "
                                 f"{figures['max']:.3g} standard deviations (> {INT8_TOLERANCE:g}); nothing was written")
        meta["files"][INT8_FILE] = {**entry, "verified": {k: round(v, 6) for k, v in figures.items()}}
        meta["precisions"] = {"float32": FLOAT_FILE, "int8": INT8_FILE}
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
    load_model(folder, precision="int8")  # the directory validates with its new graph
    return figures
