"""Make a virtual environment layered on the running one: its own packages first, then this one's.

`python envs/overlay.py DIR` (re)creates DIR without pip (install into it with `pip --python DIR/bin/python`);
a .pth file adds this environment's site-packages after DIR's own, with their .pth files (editable installs).
Used for .venv-jai/ (see envs/jupyternaut.txt): a few packages that cannot share .venv/ with vLLM.
"""
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

target = Path(sys.argv[1]).absolute()
venv.create(target, with_pip=False, clear=True)
own = subprocess.check_output([target / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              text=True).strip()
Path(own, "zz_base_environment.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
