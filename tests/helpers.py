"""Shared test helpers (a plain module: tests import it, conftest.py only configures pytest).

Nothing here imports JAX: conftest.py imports FAST_COMPILE_FLAGS before JAX starts.
"""

import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "sfmnet_w16_s32.npz"
RELEASE_METRICS = FIXTURES / "release_metrics.npz"
DISCRIMINATOR_GOLDEN = FIXTURES / "discriminators_golden.npz"
GRADIENT_GOLDEN = FIXTURES / "gradient_golden.npz"
LEGACY_CHECKPOINT = FIXTURES / "legacy_checkpoint"
REPO = pathlib.Path(__file__).resolve().parents[1]

# Tests compile many small programs: trade XLA:CPU's code optimisation (not its numerics)
# for faster compiles (LLVM at O0 without its expensive passes, and XLA:CPU's older
# elemental emitters instead of its fusion emitters).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")


def load_golden():
  """The release's golden vector: state_dict (`param/...`), NHWC input and outputs."""
  with np.load(GOLDEN) as d:
    data = {k: d[k] for k in d.files}
  nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
  return {
      "state_dict": {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")},
      "lr_up": nhwc(data["input/lr_up"]),
      "img_out": nhwc(data["output/img_out"]),
      "img_fre": nhwc(data["output/img_fre"]),
  }


def seeded_release_weights(shapes, seed: int, gain: float = 1.0):
  """Deterministic weights for release state_dict names: {name: PyTorch-layout shape} -> arrays.

  Each tensor is drawn from its own generator, seeded by (seed, crc32(name)), uniform in
  gain times PyTorch's default bound 1/sqrt(fan_in) (a bias takes its weight's), so that the
  fixture script (from the release's torch modules) and the tests (from the port's
  parameter names) rebuild the same weights without storing them.
  """
  import zlib  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(shapes):
    shape = tuple(shapes[name])
    weight = shapes.get(name[:-len("bias")] + "weight", shape) if name.endswith("bias") else shape
    fan_in = int(np.prod(weight[1:])) if len(weight) > 1 else 1
    bound = gain / np.sqrt(fan_in)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
  return out


def release_gradients():
  """(lr_up, hr) in NHWC and {state_dict name: gradient} of the release's PSNR-stage loss
  (gradient_golden.npz, made by make_gradient_golden.py with the golden vector's weights)."""
  with np.load(GRADIENT_GOLDEN) as d:
    grads = {k[len("grad/"):]: d[k] for k in d.files if k.startswith("grad/")}
    return (d["input/lr_up"].transpose(0, 2, 3, 1), d["input/hr"].transpose(0, 2, 3, 1), grads)


def release_loss():
  """(total, {term: value}) of the release's PSNR-stage loss in gradient_golden.npz."""
  with np.load(GRADIENT_GOLDEN) as d:
    terms = {k[len("loss/"):]: float(d[k]) for k in d.files if k.startswith("loss/")}
  return terms.pop("total"), terms


def median_relative_error(got, want):
  """The median over tensors of |got - want| / |want| (Frobenius norms), by name."""
  errors = [np.linalg.norm(np.asarray(got[k], np.float64) - want[k]) / np.linalg.norm(want[k])
            for k in want]
  return float(np.median(errors))


def raw_face_photos(root, count=3):
  """A folder of raw photos for `prepare`: `count` JPEGs of the astronaut's face (one face
  each, the second two faces), a blank PNG (no face) and a broken file."""
  from PIL import Image
  from sfmnet_jax.data import astronaut
  root.mkdir()
  for i in range(count):
    img, _ = astronaut.astronaut_group_photo(1 + (i == 1), (300, 500), 60, seed=i)
    Image.fromarray(img).save(root / f"photo_{i}.jpg", quality=95)
  Image.new("RGB", (200, 200), (90, 90, 90)).save(root / "empty.png")
  (root / "broken.png").write_bytes(b"not an image")
  return root


def tame_golden_weights(path, factor: float = 0.01):
  """Writes the golden vector's release weights with every FreqBlock's phase convolutions
  (`pha_fuse`) scaled by `factor` as an .npz, and returns its path.

  With random weights a spectrum bin at its 2 pi phase jump makes two numerical paths
  differ by up to 5e-2 (the release's own output moves that much under 1e-6 of input
  noise). Scaled phase convolutions turn a jump into a change of ~1e-4 at most, so that
  128x128 outputs of two paths can be compared at a fixed bar on any input.
  """
  state = load_golden()["state_dict"]
  tame = {k: (v * factor if ".pha_fuse." in k else v) for k, v in state.items()}
  assert sum(".pha_fuse." in k for k in tame) >= 28  # 14 FreqBlocks, 2 convs with bias
  np.savez(path, **tame)
  return path


def override(config, overrides):
  """`config` with {"a.b": value} applied, as --config.a.b=value would."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config
