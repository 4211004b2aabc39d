"""Every MLflow tag name rankhouse writes or reads, in one place.

Tags are rankhouse's record in MLflow: the UI filters on them, promotion reads them back, and
a resumed study finds its runs by them. A name written here is a contract with stores that
already exist, so renaming one orphans the runs that carry the old name.
"""

PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent

# the study's parent run
STUDY = "rankhouse.study"  # also on every trial's child run
SPACE = "rankhouse.space"  # the search-space file the study was started from
RESUMES = "rankhouse.resumes"  # how many times ``--resume`` took the study up again
BEST_RUN = "rankhouse.best_run"
PLOT_SKIPPED = "rankhouse.plot_skipped."  # + the plot's name: why the report left it out

# a trial's child run
TRIAL_ID = "rankhouse.trial_id"  # Ray Tune's trial id: finds the run again on a retry or resume
PID, NODE = "rankhouse.pid", "rankhouse.node"
BEST_EPOCH = "rankhouse.best_epoch"  # the epoch of the logged adapter
FAILURE = "rankhouse.failure"
STOPPED_BY = "rankhouse.stopped_by"  # "scheduler": ASHA stopped it early
LOST = "rankhouse.lost"  # lost with a killed driver before Tune saved it; replaced on resume
PARETO = "rankhouse.pareto"  # on the front of a multi-objective search
RESTARTS = "rankhouse.restarts"
RESUMED_FROM_EPOCH = "rankhouse.resumed_from_epoch"
PREVIEW_EPOCH = "rankhouse.preview_epoch"
PREVIEW_WARNING = "rankhouse.preview_warning"
PROMOTION = "rankhouse.promotion"  # promotion's decision about this run

# a registered model and its versions
CHAMPION_HISTORY = "rankhouse.champion_history"  # versions that held the alias, in order
ROLLED_BACK = "rankhouse.rolled_back"
RUN_ID = "rankhouse.run_id"
CONFIG = "rankhouse.config"  # the trial's parameters, JSON
BASE_NAME, BASE_SHA256 = "rankhouse.base.name", "rankhouse.base.sha256"
HOLDOUT = "rankhouse.holdout"  # which tracks the version was scored on
HOLDOUT_SCORE = "rankhouse.holdout_"  # + a metric name: the version's holdout scores
CHAMPION_SCORE = "rankhouse.champion_sdr"  # the reference it beat, on the same tracks
COMPARED_WITH = "rankhouse.compared_with"
DECISION = "rankhouse.decision"
MERGED, MERGED_SHA256 = "rankhouse.merged", "rankhouse.merged_sha256"
