"""Will a config fit a TPU or GPU that is not here, and how fast can it be at best?

The real training programs compiled ahead of time for a target's compile-only
devices, and what XLA says of them:

- `chips.py`: the one chip table (memory, peak FLOP/s, bandwidth) and the one
  roofline formula.
- `targets.py`: the targets' compile-only devices (libtpu's TPU topologies, the
  CUDA plugin with a description from `gpu_specs/`).
- `programs.py`: the one builder of a config's abstract programs (PSNR step, GAN
  step, forward) as a GPU or TPU host builds them.
- `cost.py`: the one reader of XLA's cost and memory analyses.
- `aot.py`: `sfmnet-benchmark aot`, the compiles and their report.
- `hlo_costs.py`: XLA's cost of each instruction of an optimized module, tile padding and
  memory spaces included.
- `breakdown.py`: where a compiled program's bytes and FLOPs go, by model part.
"""
