"""ONNX Runtime Web in the engine worker (Pyodide only): a decoder session on its WebGPU
execution provider or its wasm (CPU) one, behind onnx_decode.Runtime.

The runtime is served from the site's vendor/ort/ folder (build.py copies it from npm's
onnxruntime-web): ort.webgpu.min.mjs and the threaded wasm binary it loads, which holds both
providers.
"""

from __future__ import annotations

import struct

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, to_js  # type: ignore[import-not-found]

from ..errors import UserError, one_line
from ..onnx_decode import DecoderShape
from .tokenizer import _import

ORT_MODULE = "vendor/ort/ort.webgpu.min.mjs"


class OnnxRuntimeError(UserError):
    """ONNX Runtime Web could not load or run the model."""


async def load_ort(base_url: str):
    """The onnxruntime-web module, told where its wasm files are (the worker runs from a blob:
    URL, so it cannot find them itself)."""
    ort = await _import(js.URL.new(ORT_MODULE, base_url).href)
    ort.env.wasm.wasmPaths = js.URL.new("vendor/ort/", base_url).href
    ort.env.wasm.numThreads = max(1, min(4, int(getattr(js.navigator, "hardwareConcurrency", 2) or 2) // 2))
    ort.env.logLevel = "error"  # (its warnings about node placement would read as console errors)
    return ort


def _int64(values: list[int]):
    return getattr(js.BigInt64Array, "from")(to_js(values), js.BigInt)


class WebOrtDecoder:
    """A decoder session: run() feeds the ids, mask, positions and cache, returns the last
    logits and the present cache (kept as ONNX Runtime tensors, never copied into Python)."""

    def __init__(self, ort, session, shape: DecoderShape, provider: str):
        self.ort, self.session, self.provider, self.shape = ort, session, provider, shape
        self.layers, self.kv_heads, self.head_dim = shape.layers, shape.kv_heads, shape.head_dim
        self.inputs = {str(n) for n in session.inputNames}

    @classmethod
    async def create(cls, ort, model, shape: DecoderShape, providers: list[str], external=None) -> "WebOrtDecoder":
        """A session over `model` (a Uint8Array of the .onnx file) on the first provider of
        `providers` that takes it ("webgpu", "wasm"); `external`: its external data files, a
        list of {path, data}."""
        errors = []
        for provider in providers:
            if provider == "webgpu" and getattr(js.navigator, "gpu", None) is None:
                errors.append("webgpu: this browser has no WebGPU")
                continue
            options = {"executionProviders": to_js([provider]), "graphOptimizationLevel": "all", "logSeverityLevel": 3}
            if external is not None:
                options["externalData"] = external
            try:
                session = await ort.InferenceSession.create(model, to_js(options, dict_converter=js.Object.fromEntries))
            except JsException as exc:
                errors.append(f"{provider}: {one_line(exc)}")
                continue
            return cls(ort, session, shape, provider)
        raise OnnxRuntimeError("ONNX Runtime Web could not load the model (" + "; ".join(errors) + ")")

    async def run(self, ids: list[int], start: int, past) -> tuple[list[float], object]:
        ort, S = self.ort, len(ids)
        P = int(past[0].dims[2]) if past is not None else 0
        feeds = js.Object.new()
        js.Reflect.set(feeds, "input_ids", ort.Tensor.new("int64", _int64(ids), to_js([1, S])))
        js.Reflect.set(feeds, "attention_mask", ort.Tensor.new("int64", _int64([1] * (P + S)), to_js([1, P + S])))
        if "position_ids" in self.inputs:
            js.Reflect.set(feeds, "position_ids", ort.Tensor.new("int64", _int64(list(range(start, start + S))),
                                                                 to_js([1, S])))
        empty = None
        for i in range(self.layers):
            for j, kind in enumerate(("key", "value")):
                if past is None and empty is None:
                    empty = ort.Tensor.new("float32", js.Float32Array.new(0),
                                                    to_js([1, self.kv_heads, 0, self.head_dim]))
                js.Reflect.set(feeds, f"past_key_values.{i}.{kind}", past[2 * i + j] if past is not None else empty)
        try:
            out = await self.session.run(feeds)
        except JsException as exc:
            raise OnnxRuntimeError(f"ONNX Runtime Web ({self.provider}) failed: {one_line(exc)}") from None
        logits = out.logits
        V = int(logits.dims[2])
        last = logits.data.subarray((S - 1) * V, S * V)
        values = list(struct.unpack(f"<{V}f", last.to_bytes()))
        present = [js.Reflect.get(out, f"present.{i}.{kind}") for i in range(self.layers) for kind in ("key", "value")]
        return values, present

    def release(self) -> None:
        try:
            self.session.release()
        except JsException:
            pass
