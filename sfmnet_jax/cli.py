"""One command-line convention for every tool: absl flags, as `train.py` and `evaluate.py` use.

The `python -m sfmnet_jax.*` tools define their flags on a fresh `FlagValues`
per call (not absl's global FLAGS), so that tools can be imported and called
from Python and from tests side by side: `main(["--flag=value", "positional"])`.
"""

import sys
import textwrap
from typing import Callable, List, Optional, Sequence, Tuple

from absl import flags


class UsageError(Exception):
  """Bad command-line arguments (printed with the tool's usage, exit code 2)."""


def parse(argv: Optional[Sequence[str]], define: Callable[[flags.FlagValues], None], doc: str,
          prog: str) -> Tuple[Optional[flags.FlagValues], List[str]]:
  """(flag values, positional arguments), or (None, []) after printing --help."""
  argv = list(sys.argv[1:] if argv is None else argv)
  values = flags.FlagValues()
  try:
    define(values)  # a config flag reads its --config.FIELD overrides here
    if any(a in ("-h", "--help", "-help") for a in argv):
      print(textwrap.dedent(doc).strip() + "\n\nflags:\n" + values.get_help())
      return None, []
    positional = values([prog] + argv)[1:]
  except flags.Error as e:
    raise UsageError(str(e)) from None
  except (AttributeError, KeyError) as e:  # a --config.FIELD that the config does not have
    raise UsageError(f"no such config field: {e}") from None
  return values, positional


def run(main: Callable[[flags.FlagValues, List[str]], int], argv, define, doc: str,
        prog: str) -> int:
  """Parses `argv` and calls `main(flag values, positional)`; usage errors exit with 2."""
  try:
    values, positional = parse(argv, define, doc, prog)
    if values is None:
      return 0
    return main(values, positional)
  except UsageError as e:
    print(f"{prog}: {e}\n(see {prog} --help)", file=sys.stderr)
    return 2
