"""Does the port compute and train like the authors' release? Everything that runs their code
beside this package's.

- `checkout.py`: the one loader of a release checkout (github.com/wcy-cs/SFMNet), and
  its one error, `ReleaseUnavailable`, whose message says what to get.
- `worker.py`: the release side in another Python (with torch), over a line protocol.
- `release_side/`: that worker's own code, which imports the checkout's `models/` and
  loss classes (a folder of its own: nothing beside it shadows a module torch imports).
- `port_side.py`: the port's side of a twin (its train step from the other side's weights).
- `port_worker.py`: the port itself behind the worker's protocol, in another numerical mode
  (`--reference=port:...`: two modes of the port as a twin, no release needed).
- `twin.py`: both sides trained from the same init on the same batches.
- `pairs.py`: a study's finished pairs, kept with their settings and resumed.
- `stats.py`: the twin's statistics (pure numpy/scipy): where curves part, parameter
  distances, the paired equivalence test.
- `report.py`: the twin's JSON and pictures.
"""
