"""Train, merge and export on a cloud GPU (Modal) from the same project file, and fetch the run back.

    plan.py       what a remote run needs, worked out locally (packages, volumes, uploads, the job)
    worker.py     what runs in the container: the slothctl command, retried from the newest checkpoint
    modal_app.py  the Modal App built from a plan, launching and following it, the runs volume
    pull.py       copying a run folder from the volume into the local runs folder

Only modal_app.py imports `modal` (the optional `slothctl[modal]` extra), and only when called.
"""
