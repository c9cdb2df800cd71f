"""Import-time hook: ``import verl_agrae.platform.plugin`` runs :func:`verl_agrae.platform.install`.

For verl's ``VERL_USE_EXTERNAL_MODULES`` mechanism (a module list imported by every process that imports
verl) and for our ``verl.plugins`` entry point module, which imports it.
"""

from verl_agrae.platform import install

install()
