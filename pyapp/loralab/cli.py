"""`loralab`: the native command line (CPython, wgpu-native)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .gpu.device import GpuError


async def _info() -> dict:
    from .gpu.native import NativeDevice
    from .kernels import KernelLibrary, directory_reader
    from .selftest import matmul_check

    device = await NativeDevice.create()
    check = await matmul_check(device, KernelLibrary(device, directory_reader()))
    check.pop("output")
    return {"adapter": device.info.summary(), "check": check}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loralab", description="LoRA fine-tuning on WebGPU (native driver).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="describe the GPU adapter and run the kernel self-check; prints JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            result = asyncio.run(_info())
            print(json.dumps(result, indent=1))
            return 0 if result["check"]["ok"] else 1
    except GpuError as exc:
        print(f"loralab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
