"""The native driver of the device layer (lavapipe here)."""

from __future__ import annotations

import struct

import pytest

from loralab.gpu.device import GpuError, MissingCapabilityError, ShaderError, check_limits


def test_adapter_info(gpu):
    info = gpu.info.summary()
    assert info["driver"] == "native"
    assert info["vendor"]
    assert info["limits"]["maxStorageBufferBindingSize"] >= 128 * 2**20


def test_write_then_read_round_trip(gpu, run):
    data = struct.pack("<6f", 1.5, -2.0, 3.25, 0.0, 1e-7, 7e30)
    buf = gpu.create_buffer_with_data(data, label="roundtrip")
    assert run(gpu.read_buffer(buf)) == data
    assert run(gpu.read_buffer(buf, 8, 6)) == data[8:14]


def test_read_out_of_range_is_refused(gpu, run):
    buf = gpu.create_buffer(16, label="small")
    with pytest.raises(GpuError, match="small"):
        run(gpu.read_buffer(buf, 8, 16))


def test_oversized_buffer_names_the_limit(gpu):
    with pytest.raises(GpuError, match="huge.*at most"):
        gpu.create_buffer(gpu.info.limits["maxBufferSize"] + 4, label="huge")


def test_shader_error_carries_the_compiler_message(gpu, run):
    with pytest.raises(ShaderError, match="broken"):
        run(gpu.compile("@compute @workgroup_size(1) fn main() { let x: f32 = undefined_name; }", "main", label="broken"))


def test_missing_limits_are_named():
    with pytest.raises(MissingCapabilityError, match="maxStorageBuffersPerShaderStage is 4"):
        check_limits(
            {
                "maxStorageBufferBindingSize": 2**30,
                "maxBufferSize": 2**30,
                "maxComputeWorkgroupStorageSize": 32768,
                "maxComputeInvocationsPerWorkgroup": 1024,
                "maxStorageBuffersPerShaderStage": 4,
                "maxComputeWorkgroupsPerDimension": 65535,
            }
        )


def test_the_subgroup_probe_measures_a_power_of_two(gpu, kernels, run):
    from loralab.ops import measure_subgroup_size

    if not gpu.info.has_subgroups:
        pytest.skip("this adapter has no subgroups")
    size = run(measure_subgroup_size(gpu, kernels))
    assert size >= 1 and size & (size - 1) == 0
    if gpu.info.subgroup_min_size:
        assert size >= gpu.info.subgroup_min_size
