"""The release's side of a twin, run as a script in a Python with torch (`twin_worker.py`); its
folder holds nothing else, so that nothing here shadows a module torch or the release
imports."""
