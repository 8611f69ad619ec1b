"""The pure-Python ONNX writer (formats/onnx.py) against the onnx package and onnxruntime: a small
graph written inline and with external data, streamed initializers, every attribute kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loralab.formats import onnx as writer
from loralab.formats.onnx import FLOAT, FLOAT16, Graph, Node, Tensor, Value, floats, ints


def graph() -> tuple[Graph, dict[str, np.ndarray]]:
    """y = LayerNorm(Reshape(x, [-1, 6]) @ Wᵀ + b) · 0.5, W streamed as float32 and b as float16."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float16)
    nodes = [
        Node("Reshape", ["x", "shape"], ["x2"]),
        Node("Cast", ["b"], ["b32"], {"to": FLOAT}),
        Node("Gemm", ["x2", "w", "b32"], ["h"], {"transB": 1, "alpha": 1.0}),
        Node("LayerNormalization", ["h", "ones", "zeros"], ["n"], {"axis": -1, "epsilon": 1e-5}),
        Node("Mul", ["n", "half"], ["m"]),
        Node("Transpose", ["m"], ["t"], {"perm": [1, 0]}),
        Node("Transpose", ["t"], ["y"], {"perm": [1, 0]}, name="back"),
    ]
    inits = [ints("shape", [-1, 6]), Tensor("w", FLOAT, (6, 6)), Tensor("b", FLOAT16, (6,)),
             floats("ones", [1.0] * 6), floats("zeros", [0.0] * 6), floats("half", [0.5], ())]
    g = Graph("test", nodes, [Value("x", FLOAT, ("batch", 3, 2))], [Value("y", FLOAT, ("rows", 6))], inits,
              {"": 17}, metadata={"source": "loralab test"})
    return g, {"w": w, "b": b}


async def stream(data: dict[str, np.ndarray]):
    for name in ("w", "b"):
        yield name, data[name].tobytes()


def expected(x: np.ndarray, data: dict[str, np.ndarray]) -> np.ndarray:
    h = x.reshape(-1, 6) @ data["w"].T + data["b"].astype(np.float32)
    n = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    return n * 0.5


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_written_model_loads_checks_and_runs(tmp_path, run, external):
    import onnx
    import onnxruntime

    g, data = graph()
    path = tmp_path / "model.onnx"
    with open(path, "wb") as f, open(tmp_path / "model.onnx_data", "wb") as d:
        run(writer.write_model(f.write, g, stream(data), ("model.onnx_data", d.write) if external else None))
    if external:
        assert (tmp_path / "model.onnx_data").stat().st_size == 6 * 6 * 4 + 6 * 2
    else:
        assert path.stat().st_size == writer.model_size(g)
    model = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    assert model.ir_version == writer.IR_VERSION and model.producer_name == "loralab"
    assert {p.key: p.value for p in model.metadata_props} == {"source": "loralab test"}
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 2]
    x = np.random.default_rng(1).standard_normal((4, 3, 2)).astype(np.float32)
    y = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, expected(x, data), rtol=1e-4, atol=1e-5)


def test_streamed_initializers_must_arrive_in_order_and_size(tmp_path, run):
    g, data = graph()

    async def wrong():
        yield "b", data["b"].tobytes()

    async def short():
        yield "w", data["w"].tobytes()[:-4]

    for bad in (wrong(), short()):
        with pytest.raises(ValueError, match="initializer w"):
            run(writer.write_model(lambda _: None, g, bad))


def test_over_two_gigabytes_needs_external_data(run):
    big = Graph("big", [Node("Identity", ["w"], ["y"])], [], [Value("y", FLOAT, (1 << 29,))],
                [Tensor("w", FLOAT, (1 << 29,))], {"": 17})
    assert writer.model_size(big) > writer.PROTOBUF_LIMIT
    with pytest.raises(Exception, match="2 GB"):
        run(writer.write_model(lambda _: None, big))


def test_folder_config_names_the_external_data_for_transformers_js():
    from loralab.onnx_export import folder_config

    base = json.dumps({"model_type": "llama"}).encode()
    assert json.loads(folder_config(base, {"onnx/model.onnx": False})) == {"model_type": "llama"}
    config = json.loads(folder_config(base, {"onnx/model.onnx": True, "onnx/model_q4.onnx": False}))
    assert config["transformers.js_config"] == {"use_external_data_format": {"model.onnx": 1}}
