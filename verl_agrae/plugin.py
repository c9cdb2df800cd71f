"""What verl loads in every process through our ``verl.plugins`` entry point (see setup.py).

Keep this import cheap: it runs inside ``import verl`` in the driver, the TaskRunner and every worker.
"""

from verl_agrae.register import register

register()
