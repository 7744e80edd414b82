"""Maps the repository's folders under one import package, ``cdc_bridge``.

The folders keep the names of the pipeline's stages (``bridge/``, ``adapters/``,
``outbox/``); installed, they are ``cdc_bridge``, ``cdc_bridge.adapters`` and
``cdc_bridge.outbox``, so nothing generic lands at the top of site-packages. Every
package under these folders is found here, so a new source needs no edit of this file.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"cdc_bridge": "bridge", "cdc_bridge.adapters": "adapters",
         "cdc_bridge.outbox": "outbox"}


def _packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            found.append(".".join((name, *rel)))
    return found


#: Folders of data only, shipped as packages of their own: the status page the daemon
#: serves (``bridge/daemon/web/``: HTML, CSS, JavaScript, an icon; no build step).
DATA_PACKAGES = {"cdc_bridge.daemon.web": ["*.html", "*.css", "*.js", "*.svg"]}

setup(package_dir=ROOTS, packages=[*_packages(), *DATA_PACKAGES],
      package_data={"cdc_bridge": ["py.typed"], **DATA_PACKAGES})
