"""The release side of a twin: `release_side/twin_worker.py` in another Python, over a line protocol.

The worker runs in `--release_python` (any Python with torch and einops) beside
a release checkout; JSON objects go one per line over its stdin and stdout and
arrays travel as .npz files in a folder both sides see (the worker's docstring
lists the messages). Any process that honours the protocol can stand in for
the release (the suite's `tests/parity/fake_release.py` does, without torch).
"""

import json
import os
import subprocess
import tempfile
from typing import List, Optional

from sfmnet_jax.parity.checkout import ReleaseUnavailable, release_checkout

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release_side", "twin_worker.py")


class ReleaseWorker:
  """The worker process: `call(cmd, **message)` -> its answer; arrays in `path(name)` files."""

  def __init__(self, release_dir: Optional[str], python: str = "python",
               workdir: Optional[str] = None, command: Optional[List[str]] = None):
    if command is None:
      command = [python, SCRIPT, f"--release_dir={release_checkout(release_dir)}"]
    self.workdir = workdir or tempfile.mkdtemp(prefix="sfmnet_twin_")
    os.makedirs(self.workdir, exist_ok=True)
    self.count = 0
    try:
      self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)
    except OSError as e:
      raise ReleaseUnavailable(f"cannot start the release side ({command[0]}): {e}; give "
                               "--release_python=PATH of a Python with torch and einops") from None

  def path(self, name: str) -> str:
    """A new file name in the exchange folder."""
    self.count += 1
    return os.path.join(self.workdir, f"{self.count:06d}_{name}.npz")

  def call(self, cmd: str, **msg) -> dict:
    try:
      self.proc.stdin.write(json.dumps({"cmd": cmd, **msg}) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except BrokenPipeError:
      line = ""
    if not line:
      raise ReleaseUnavailable(f"the release side exited ({self.proc.poll()}): see its messages "
                               "above (torch and einops installed for --release_python?)")
    answer = json.loads(line)
    if "error" in answer:
      raise ReleaseUnavailable(f"release side: {answer['error']}")
    return answer

  def close(self):
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()
