"""`ray job submit --working-dir . -- python ray_jobs/selection.py ARGS…`: `alloy select ARGS…` as a Ray job.

Part of the branch-merge sequence traces → select → branch → sweep (README, "The branch phase").
"""
import sys

from alloy.cli import main
from alloy.commands.jobs import job_argv

if __name__ == "__main__":
    sys.exit(main(job_argv("select", sys.argv[1:])))
