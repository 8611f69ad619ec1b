"""LoRA Lab: LoRA fine-tuning of small language models on WebGPU, in the browser and natively.

The package imports on CPython and in Pyodide alike; numpy, wgpu and js are imported only by
the modules that need them (ref, gpu.native; gpu.browser, worker, app).
"""

__version__ = "0.1.0"
