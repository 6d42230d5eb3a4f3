"""Reads PyTorch `.pth` state_dicts into numpy arrays, with or without torch.

Files in PyTorch's zip format (every `torch.save` since PyTorch 1.6) are read
by a restricted unpickler that only rebuilds tensors, ordered dicts and plain
containers; anything else in the pickle is refused, with or without torch
installed. Legacy (pre-1.6) files need torch (`torch.load(weights_only=True)`);
without it the error says how to convert them to `.npz` instead.
"""

import collections
import pickle
import zipfile
from typing import Dict

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# Checkpoint wrappers seen in SR code bases: {"state_dict": ...}, {"params": ...}, ...
_WRAPPER_KEYS = ("state_dict", "model", "params", "params_ema", "net", "netG", "generator")

CONVERT_HINT = (
    "Convert it on a machine with PyTorch:\n"
    "  python -c \"import torch, numpy as np; sd = torch.load('IN.pth', map_location='cpu'); "
    "np.savez('OUT.npz', **{k: v.numpy() for k, v in sd.items()})\"\n"
    "and pass OUT.npz instead (or `pip install torch`).")


class _Storage:
  def __init__(self, array):
    self.array = array


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  base = storage.array
  if not size:
    return np.array(base[offset])
  itemsize = base.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      base[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds tensors from a torch zip archive; refuses any other global."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix, self._cache = archive, prefix, {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "torch" and name == "BFloat16Storage":
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      return ml_dtypes.bfloat16
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")

  def persistent_load(self, pid):
    kind, dtype, key, _location, _numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    if key not in self._cache:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      self._cache[key] = _Storage(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")))
    return self._cache[key]


def _load_zip_without_torch(path: str):
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if not pkl:
      raise ValueError(f"{path}: a zip file but not a PyTorch checkpoint (no data.pkl)")
    prefix = pkl[0][:-len("data.pkl")]
    with archive.open(pkl[0]) as f:
      return _RestrictedUnpickler(f, archive, prefix).load()


def _load_any(path: str):
  """Zip-format files through the restricted unpickler (torch or not); legacy ones need torch."""
  if zipfile.is_zipfile(path):
    return _load_zip_without_torch(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic.startswith(b"PK"):
    raise ValueError(f"{path}: not a readable PyTorch state_dict (truncated or corrupt zip)")
  if not magic.startswith(b"\x80"):
    raise ValueError(f"{path}: not a readable PyTorch state_dict (neither a zip nor a pickle)")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is None:
    raise ValueError(
        f"{path}: an older (pre-1.6) PyTorch file, which needs torch to read, and torch is "
        f"not installed. {CONVERT_HINT}")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError) as e:
    raise ValueError(f"{path}: not a readable PyTorch state_dict ({str(e).splitlines()[0]})") \
        from None
  return _to_numpy_tree(obj)


def _to_numpy_tree(obj):
  if hasattr(obj, "detach") and hasattr(obj, "numpy"):
    t = obj.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
      t = t.float()
    return t.numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy_tree(v) for k, v in obj.items()}
  return obj


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a `.pth` file and returns its state_dict as numpy arrays.

  Unwraps common containers ({"state_dict": ...}, {"params_ema": ...}) and
  strips a DataParallel `module.` prefix.
  """
  try:
    obj = _load_any(path)
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError) as e:
    raise ValueError(f"{path}: not a readable PyTorch state_dict ({e})") from e
  for key in _WRAPPER_KEYS:
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path}: does not hold a state_dict (a dict of tensors), "
                     f"found {type(obj).__name__}")
  return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
