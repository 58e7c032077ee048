"""Every name ftsweep writes on an MLflow run (tags) or an Optuna trial or study (attributes), in one
place, as mlflow/utils/mlflow_tags.py does for MLflow's own: a reader and a writer can never spell
one differently."""

# On every run of a CV: the unit of work and the table row it belongs to
CONFIG_KEY_TAG = "ftsweep.config_key"  # the config, data and seed: one parent run per key (tracking/keys.py)
ROW_KEY_TAG = "ftsweep.row_key"  # the results-table row: the config and data, seeds pooled
SETUP_KEY_TAG = "ftsweep.setup_key"  # the config without its data: the same set-up on other rows
DATA_FINGERPRINT_TAG = "ftsweep.data_fingerprint"  # which rows (also a study attribute: what a study ran on)
LABEL_TAG = "ftsweep.label"
OVERRIDES_TAG = "ftsweep.overrides"  # the job's overrides (also a trial attribute: what best.yaml rebuilds)
SEED_TAG = "ftsweep.seed"
GIT_COMMIT_TAG = "ftsweep.git_commit"
JOB_NUM_TAG = "ftsweep.job_num"  # the job's index in its sweep: orders rows as the command did
DEVICE_TAG = "ftsweep.device"
ERROR_TAG = "ftsweep.error"  # why a run ended FAILED or KILLED (cleared when it is taken over)
FOLD_TAG = "ftsweep.fold"  # only on fold runs: the fold number (a parent run has none)
# On each fold run: which validation rows it scored (a digest of their sorted ids; the data, cv.n_folds,
# cv.fold_seed and cv.n_bins all move them) and "n_val/n_train", so the table compares the same rows.
FOLD_ROWS_TAG = "ftsweep.fold_rows"
FOLD_SIZES_TAG = "ftsweep.fold_sizes"
# On a parent whose folds are not all finished: "2 of 3" (it gets rmse_mean, the OOF and oof.csv when the last one is)
FOLDS_FINISHED_TAG = "ftsweep.folds_finished"
# On a parent whose folds ran as jobs of their own (cv.folds): a plain run of its config joins it (tracking.resume=auto)
FOLD_JOBS_TAG = "ftsweep.fold_jobs"
KIND_TAG = "ftsweep.kind"  # runs that are not CVs: a results table, a search summary
TABLE_KIND = "table"

# Who holds a running unit (tracking/units.py) or trial (search/study.py), and that it is alive
OWNER_TAG = "ftsweep.owner"
HEARTBEAT_TAG = "ftsweep.heartbeat"
# A claim on a server store (tracking/units.py): a hidden experiment named CLAIM_PREFIX + "<experiment id>/<unit
# key>#<generation>", whose tags are its owner's, with CLAIM_ID_TAG (that claim attempt): who is inside the unit's
# critical section (a look and the writes it decides)
CLAIM_PREFIX = "ftsweep.claim:"
CLAIM_ID_TAG = "ftsweep.claim_id"

# A search trial's runs: its study, its trial (lineage) number, and the fold its pruner stopped it after
STUDY_TAG = "ftsweep.study"
TRIAL_TAG = "ftsweep.trial"
PRUNED_TAG = "ftsweep.pruned"

# Optuna trial attributes
LINEAGE_ATTR = "ftsweep.lineage"  # the first attempt's trial number: one MLflow parent per lineage
INTERRUPTED_ATTR = "ftsweep.interrupted"
DIED_ATTR = "ftsweep.died"  # on a retry: its lineage's job process died once already
RUN_ID_ATTR = "ftsweep.mlflow_run_id"  # the trial's MLflow parent run (the MLflow side has the study/trial tags)
ROW_ERRORS_ATTR = "ftsweep.row_errors.{step}"  # per fold position: {"rows": digest, "sq_err": b64} (paired pruner)
# Optuna study attributes
FIXED_OVERRIDES_ATTR = "ftsweep.fixed_overrides"
PRUNERS_ATTR = "ftsweep.pruners"  # the pruning rules its runs used, a new entry per change
