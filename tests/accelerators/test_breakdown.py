"""The breakdown's pieces on closed-form cases: TPU tile padding and memory spaces of HLO
shapes, instructions parsed from HLO text, XLA's per-instruction costs summing to its
whole-module count, and op_name metadata attributed to the model's parts."""

import jax
import jax.numpy as jnp
import pytest

from sfmnet_jax.accelerators import breakdown, hlo_costs
from sfmnet_jax.model.generator import SFMNet


def test_tile_padding_and_memory_spaces_of_shapes():
  # Channels minor in a (8, 128) tile: 64 channels fill half the 128 lanes.
  assert hlo_costs.shape_bytes("bf16[8,128,128,64]{3,0,2,1:T(8,128)(2,1)}") == 8 * 128 * 128 * 64 * 2
  assert hlo_costs.shape_bytes("bf16[8,128,128,64]{3,0,2,1:T(8,128)(2,1)}", padded=True) == \
      8 * 128 * 128 * 128 * 2
  # H minor: 128 lanes full; the next dimension (64 channels) a multiple of 8 rows.
  assert hlo_costs.shape_bytes("f32[8,128,65,64]{1,3,2,0:T(8,128)S(1)}", padded=True) == \
      8 * 128 * 65 * 64 * 4
  # 3 colours in the rows of a (4, 128) tile: padded to 4; 128 W in the lanes.
  assert hlo_costs.shape_bytes("f32[8,128,128,3]{2,3,1,0:T(4,128)}", padded=True) == \
      8 * 128 * 128 * 4 * 4
  assert hlo_costs.shape_bytes("f32[16]{0:T(128)}", padded=True) == 128 * 4
  assert hlo_costs.shape_bytes("f32[2,3]", padded=True) == 24  # no layout: as it is
  pair = "(f32[8,64]{1,0:T(8,128)S(1)}, bf16[4,128]{1,0:T(8,128)(2,1)})"
  assert hlo_costs.shape_bytes(pair) == 8 * 64 * 4 + 4 * 128 * 2
  assert hlo_costs.shape_bytes(pair, padded=True) == 8 * 128 * 4 + 8 * 128 * 2
  assert hlo_costs._off_chip(pair) == pytest.approx(1 / 3)  # pylint: disable=protected-access


def test_an_instruction_line_is_parsed():
  line = ('  %fusion.550 = (bf16[8,64,33,16]{1,3,2,0:T(8,128)(2,1)S(1)}, f32[8,16]{1,0}) '
          'fusion(%fusion.813, %fusion.514), kind=kLoop, calls=%fused_computation.714, '
          'metadata={op_name="jit(f)/SFMNet/SFMNet._generate/down1_fre/layers_1/amp_fuse/x"}')
  i = hlo_costs.parse_instruction(line)
  assert (i.name, i.opcode, i.operands) == ("fusion.550", "fusion", ["fusion.813", "fusion.514"])
  assert i.shape.startswith("(bf16[8,64,33,16]") and i.shape.endswith("f32[8,16]{1,0})")
  assert i.op_name.endswith("amp_fuse/x")
  assert hlo_costs.parse_instruction("  ROOT tuple") is None


def test_per_instruction_costs_sum_to_the_whole_module():
  """XLA's analysis of each instruction alone sums to its analysis of the whole optimized
  module (a CPU compile: convolutions, a dot, a reduction, fusions)."""
  def fn(x, k, w):
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.sum(y.reshape(-1, 8) @ w, axis=0), jnp.tanh(y)

  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((2, 16, 16, 4), (3, 3, 4, 8), (8, 8))]
  compiled = jax.jit(fn).lower(*shapes).compile()
  rows = hlo_costs.instruction_costs(compiled.as_text())
  whole = hlo_costs.hlo_cost_analysis(compiled.runtime_executable().hlo_modules()[0])
  assert sum(r["flops"] for r in rows) == pytest.approx(whole["flops"], rel=1e-6)
  assert sum(r["bytes"] for r in rows) == pytest.approx(whole["bytes accessed"], rel=1e-6)
  assert whole["flops"] > 2 * 16 * 16 * 2 * 9 * 4 * 8  # the convolution is in it
  # On the CPU no layout is tiled and nothing is on chip: padded = logical = off chip.
  assert sum(r["padded_bytes"] for r in rows) == pytest.approx(whole["bytes accessed"], rel=1e-6)
  assert sum(r["off_chip_padded_bytes"] for r in rows) == \
      pytest.approx(sum(r["padded_bytes"] for r in rows))


@pytest.mark.parametrize("op_name, part", [
    ("jit(psnr_step)/shard_map/jvp(SFMNet)/SFMNet._generate/down1_fre/layers_1/"
     "layers_1.spectrum/wk,bhwc->bhkc/dot_general", ("FreqBlock: spectrum (rfft2)", "forward")),
    ("jit(psnr_step)/shard_map/transpose(jvp(SFMNet))/SFMNet._generate/up3_fre_mo/layers_0/"
     "amp_fuse/layers_2/reduce_sum", ("FreqBlock: amplitude/phase 3x3 convs", "backward")),
    ("jit(f)/shard_map/SFMNet/SFMNet._generate/layers_12/fre_att/q_dwconv/conv",
     ("FuseBlock: channel attention", "forward")),
    ("jit(f)/shard_map/SFMNet/SFMNet._generate/layers_3/fuse/layers_0/conv",
     ("FuseBlock: gate convs", "forward")),
    ("jit(f)/SFMNet/SFMNet._generate/down2/layers_1/body/layers_0/layers/layers_0/layers/conv",
     ("ResidualGroup", "forward")),
    ("jit(f)/SFMNet/SFMNet._generate/down2/layers_0/layers/layers_2/layers/conv",
     ("Down", "forward")),
    ("jit(f)/SFMNet/SFMNet._generate/tail/layers_0/act/mul", ("head/tail convs", "forward")),
    ("jit(psnr_step)/shard_map/jvp(loss)/reduce_sum", ("loss", "forward")),
    ("jit(psnr_step)/shard_map/optimizer/cond/add", ("optimizer update", "")),
    ("jit(psnr_step)/shard_map/allreduce/psum", ("gradient all-reduce", "")),
    ("jit(gan_step)/shard_map/jvp(SpatialDiscriminator)/conv", ("SpatialDiscriminator", "forward")),
    ("", ("(no metadata: layout copies)", "")),
])
def test_op_names_are_attributed_to_the_models_parts(op_name, part):
  classes = breakdown.module_classes(SFMNet(num_features=8, num_resblocks=2))
  assert breakdown.part_of(op_name, "fusion", classes) == part
