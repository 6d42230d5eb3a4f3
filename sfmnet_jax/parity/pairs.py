"""A twin study's finished pairs: kept in `OUT/pairs/seed<S>/pair.json` with the settings
that made them, so that the same command run again reuses them (and another does not)."""

import json
import os


def pair_dir(output: str, seed: int) -> str:
  """The folder of `seed`'s pair (its JSON and both trained generators)."""
  return os.path.join(output, "pairs", f"seed{seed}")


def save(output: str, seed: int, key: dict, pair: dict) -> None:
  """Writes `pair` with `key` (the settings that made it), atomically."""
  path = os.path.join(pair_dir(output, seed), "pair.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"key": key, "pair": pair}, f)
  os.replace(path + ".tmp", path)


def load(output: str, seed: int, key: dict):
  """The pair of `seed` run earlier into `output` with the same settings, or None."""
  try:
    with open(os.path.join(pair_dir(output, seed), "pair.json")) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  return saved["pair"] if saved.get("key") == json.loads(json.dumps(key)) else None
