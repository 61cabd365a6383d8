"""`ray job submit --working-dir . -- python ray_jobs/export.py ARGS…`: `alloy export ARGS…` as a Ray job.

Inside a job the driver joins the cluster it was submitted to (`--address auto` where the command
takes an address), so the same arguments as on a laptop run on the cluster.
"""
import sys

from alloy.cli import main
from alloy.commands.jobs import job_argv

if __name__ == "__main__":
    sys.exit(main(job_argv("export", sys.argv[1:])))
