"""The int8 step graph: made by `trainer.export --precision int8`, registered in model.json, chosen with
load_model(precision=...) and `--precision` on the command lines; its network is int8, its pose decoding float32."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from godot_bridge.serve import parse_args, run as serve_run
from runtime.bake import main as bake_main
from runtime.controller import Controller
from runtime.model import DEFAULT_MODEL, INT8_FILE, ModelError, load_model, sha256_file
from tests.contract import check_refusal, run_main
from trainer.export import main as export_main
from trainer.quantize import INT8_TOLERANCE, _network_nodes


def _copy(src: Path, dst: Path) -> Path:
    """A model directory whose ONNX files link to src's (model.json is copied: exports rewrite it)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".onnx":
            (dst / f.name).symlink_to(f.resolve())
    shutil.copy(src / "model.json", dst / "model.json")
    return dst


def test_export_adds_the_int8_graph_to_a_model_directory_and_keeps_its_policies(tmp_path):
    folder = _copy(DEFAULT_MODEL, tmp_path / "m")
    before = json.loads((folder / "model.json").read_text())
    result = run_main(export_main, ["--precision", "int8", folder])
    assert result.code == 0, result.err
    assert f"added {folder / INT8_FILE}" in result.out
    meta = json.loads((folder / "model.json").read_text())
    entry = meta["files"][INT8_FILE]
    assert meta["precisions"] == {"float32": "decoder.onnx", "int8": INT8_FILE}
    assert entry["sha256"] == sha256_file(folder / INT8_FILE) and entry["precision"] == "int8"
    assert entry["quantised_from"] == before["files"]["decoder.onnx"]["sha256"]
    assert meta["policies"] == before["policies"], "adding a precision must not drop the policies"
    assert 0 < entry["verified"]["max"] <= INT8_TOLERANCE
    # A quarter of the weight bytes: the experts' matrices dominate the file.
    assert (folder / INT8_FILE).stat().st_size < 0.35 * (folder / "decoder.onnx").stat().st_size
    model = load_model(folder, precision="int8")
    assert model.precision == "int8" and model.decoder_file == folder / INT8_FILE
    assert sorted(model.policies) == sorted(before["policies"])


def test_only_the_network_is_quantised_and_the_pose_decoding_stays_float32(int8_model_dir):
    import onnx

    graph = onnx.load(str(int8_model_dir / INT8_FILE)).graph
    network = _network_nodes(graph)
    integer = [n.name for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear")]
    assert integer and set(integer) <= network, "an integer op outside the network (in the pose decoding)"
    weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    scales = {i.name: tuple(i.dims) for i in graph.initializer}
    for w in weights:  # one scale per output column
        assert scales[w.name.replace("_quantized", "_scale")] == (w.dims[1],)


def test_int8_steps_track_float32_and_policies_run_unchanged(int8_model_dir):
    float32, int8 = load_model(int8_model_dir), load_model(int8_model_dir, precision="int8")
    a, b = Controller(float32, 8, seed=4, foot_lock=True), Controller(int8, 8, seed=4, foot_lock=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        z = rng.standard_normal((8, float32.latent_size)).astype(np.float32)
        pa, pb = a.step(z).copy(), b.step(z).copy()
        assert np.abs(a.state.condition - b.state.condition).max() < INT8_TOLERANCE
        assert np.allclose(np.linalg.norm(pb.local_rotations, axis=-1), 1, atol=1e-5)
        assert np.abs(pa.root_position - pb.root_position).max() < 0.05
        b.state.condition[:] = a.state.condition  # compare one step at a time, not two diverging rollouts


def test_shipped_policies_steer_the_int8_graph(tmp_path):
    folder = _copy(DEFAULT_MODEL, tmp_path / "m")
    assert run_main(export_main, ["--precision", "int8", folder]).code == 0
    model = load_model(folder, precision="int8")
    ctrl = Controller(model, 4, seed=0)
    for _ in range(90):  # three seconds towards +X from facing +Z
        ctrl.step(control={"task": "joystick", "direction": [1.0, 0.0], "speed": 1.5})
    heading = np.degrees(ctrl.state.yaw[:, 0])
    assert np.all(np.abs(heading - 90) < 30), f"int8 joystick headings {heading} (want about 90 degrees)"


def test_a_model_without_an_int8_graph_names_the_command_that_adds_one(tmp_path, model_dir):
    with pytest.raises(ModelError, match=r"no int8 step graph; add one with `python -m trainer.export --precision "
                                         r"int8 "):
        load_model(model_dir, precision="int8")
    with pytest.raises(ModelError, match="unknown precision 'int4'"):
        load_model(model_dir, precision="int4")
    out = tmp_path / "c.npz"
    result = run_main(bake_main, [out, "--model", model_dir, "--precision", "int8", "-q"])
    check_refusal(result, "bake --precision int8 without an int8 graph", [str(model_dir)], [out], tmp_path)


def test_a_stale_int8_graph_is_refused(tmp_path, int8_model_dir):
    folder = _copy(int8_model_dir, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["files"][INT8_FILE]["quantised_from"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(meta))
    load_model(folder)  # the float32 graph is still sound
    with pytest.raises(ModelError, match="was made from another decoder.onnx"):
        load_model(folder, precision="int8")


def test_bake_and_server_take_the_precision(tmp_path, int8_model_dir, model_dir):
    out = tmp_path / "c.npz"
    result = run_main(bake_main, [out, "--model", int8_model_dir, "--precision", "int8", "--frames", "5", "-q"])
    assert result.code == 0 and "(CPUExecutionProvider, int8)" in result.out, result.err
    with np.load(out) as clip:
        assert np.isfinite(clip["local_rotations"]).all()
    assert parse_args(["--precision", "int8"]).precision == "int8"
    code = asyncio.run(serve_run(parse_args(["--model", str(model_dir), "--precision", "int8", "--port", "0"])))
    assert code == 2


def test_export_refuses_a_model_directory_without_int8_and_a_run_without_out(tmp_path, model_dir):
    for argv, culprit in (([model_dir], str(model_dir)), ([model_dir, "--precision", "float32"], str(model_dir)),
                          ([tmp_path / "nothing", "--precision", "int8"], "nothing")):
        check_refusal(run_main(export_main, argv), f"export {argv}", [culprit], [], tmp_path)
    assert not (model_dir / INT8_FILE).exists()


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider")
def test_cuda_steps_match_the_cpu_in_both_precisions(int8_model_dir):
    for precision in ("float32", "int8"):
        cpu = Controller(load_model(int8_model_dir, precision=precision), 64, seed=2, foot_lock=True)
        gpu = Controller(load_model(int8_model_dir, "cuda", precision=precision), 64, seed=2, foot_lock=True)
        assert "CUDAExecutionProvider" in gpu.model.providers
        z = np.random.default_rng(1).standard_normal((64, cpu.model.latent_size)).astype(np.float32)
        a, b = cpu.step(z), gpu.step(z)
        assert np.abs(a.local_rotations - b.local_rotations).max() < 1e-3, precision
        assert np.abs(a.root_position - b.root_position).max() < 1e-3, precision
