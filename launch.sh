#!/usr/bin/env bash
# Cloud TPU VM launcher for tgmm-jax.
#
#   TPU_NAME=tgmm-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 ./launch.sh create
#   TPU_NAME=tgmm-v4 ZONE=us-central2-b ./launch.sh setup
#   TPU_NAME=tgmm-v4 ZONE=us-central2-b WORKDIR=gs://my-bucket/tgmm \
#       CONFIG=experiments/configs/paper.py:d=8 RUN_ID=paper-d8 ./launch.sh run
#   TPU_NAME=tgmm-v4 ZONE=us-central2-b RUN_ID=paper-d8 ./launch.sh logs [worker]
#   TPU_NAME=tgmm-v4 ZONE=us-central2-b ./launch.sh kill | delete
#
# Every command runs on all workers (--worker=all) where that applies. `run` starts the same
# `python -m experiments.train` on every host under nohup, one log per host in ~/tgmm_logs/RUN_ID/; the
# workdir is WORKDIR/RUN_ID, so rerunning `run` with the same RUN_ID resumes from the latest checkpoint.
# A multi-host slice needs a WORKDIR every host can reach (a gs:// bucket): orbax writes the checkpoints
# there, and jax.distributed.initialize() is called on TPU pods automatically (--distributed=auto).
#
# DRY_RUN=1 (or --dry-run, in any position) prints the gcloud commands instead of running them. An unknown
# command, option or extra argument is refused (exit 2) before any gcloud call.
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'TXT'
Commands: create | setup | run | logs [worker] | kill | delete | help
Variables: TPU_NAME, ZONE (all); ACCELERATOR_TYPE, TPU_VERSION (create; default tpu-ubuntu2204-base);
PROJECT (optional); REPO_DIR (default: this checkout); CONFIG, WORKDIR, RUN_ID (run; RUN_ID defaults to
a name derived from CONFIG, stable across reruns); EXTRA_ARGS (run: more flags for experiments.train).
TXT
}

fail() {  # fail MESSAGE: refuse before anything runs
  echo "launch.sh: $1" >&2
  echo "Run './launch.sh help' for the commands and variables." >&2
  exit 2
}

# Parse every argument before anything runs: --dry-run counts in any position, and a word or flag this
# script does not know stops it here, so a mistyped command line never reaches gcloud.
DRY_RUN="${DRY_RUN:-0}"
CMD=""
HELP=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) HELP=1 ;;  # help in any position only prints help: 'create --help' creates nothing
    -*) fail "unknown option '$arg'" ;;
    *) if [ -z "$CMD" ]; then CMD="$arg"; else ARGS+=("$arg"); fi ;;
  esac
done
if [ "$HELP" = 1 ]; then CMD=help; ARGS=(); fi
CMD="${CMD:-help}"
case "$CMD" in
  create|setup|run|kill|delete|help)
    if [ "${#ARGS[@]}" -gt 0 ]; then fail "'$CMD' takes no arguments, got '${ARGS[*]}'"; fi ;;
  logs)
    if [ "${#ARGS[@]}" -gt 1 ]; then fail "'logs' takes at most one argument (a worker), got '${ARGS[*]}'"; fi
    if [ "${#ARGS[@]}" -eq 1 ] && ! [[ "${ARGS[0]}" =~ ^([0-9]+|all)$ ]]; then
      fail "'logs' takes a worker number or 'all', got '${ARGS[0]}'"
    fi ;;
  *) fail "unknown command '$CMD' (commands: create | setup | run | logs [worker] | kill | delete | help)" ;;
esac
if [ "$DRY_RUN" != "0" ] && [ "$DRY_RUN" != "1" ]; then fail "DRY_RUN must be 0 or 1, got '$DRY_RUN'"; fi

run_cmd() {
  if [ "$DRY_RUN" = "1" ]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

gcloud_tpu() {
  local project_args=()
  if [ -n "${PROJECT:-}" ]; then project_args=(--project="$PROJECT"); fi
  run_cmd gcloud compute tpus tpu-vm "$@" --zone="${ZONE:?set ZONE, e.g. us-central2-b}" "${project_args[@]}"
}

remote() {  # remote WORKER COMMAND...
  local worker="$1"; shift
  gcloud_tpu ssh "${TPU_NAME:?set TPU_NAME}" --worker="$worker" --command="$*"
}

stable_run_id() {
  if [ -n "${RUN_ID:-}" ]; then echo "$RUN_ID"; return; fi
  # from the config path and its args: the same CONFIG always gives the same id, so a rerun resumes
  echo "${CONFIG:?set CONFIG or RUN_ID}" | sed 's#.*/##; s#\.py##; s#[^A-Za-z0-9]#-#g'
}

case "$CMD" in
  create)
    gcloud_tpu create "${TPU_NAME:?set TPU_NAME}" \
      --accelerator-type="${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v4-8}" \
      --version="${TPU_VERSION:-tpu-ubuntu2204-base}"
    ;;
  setup)
    : "${TPU_NAME:?set TPU_NAME}"
    repo="${REPO_DIR:-$(cd "$(dirname "$0")" && pwd)}"
    archive="$(mktemp -t tgmm-jax-XXXXXX).tar.gz"
    run_cmd git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
    gcloud_tpu scp "$archive" "$TPU_NAME:~/tgmm-jax.tar.gz" --worker=all
    remote all "rm -rf ~/tgmm-jax && mkdir -p ~/tgmm-jax && tar -xzf ~/tgmm-jax.tar.gz -C ~/tgmm-jax && \
      python3 -m venv ~/tgmm-venv && ~/tgmm-venv/bin/pip install -q --upgrade pip && \
      ~/tgmm-venv/bin/pip install -q -e ~/tgmm-jax'[tpu]' && \
      ~/tgmm-venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
    ;;
  run)
    : "${TPU_NAME:?set TPU_NAME}" "${CONFIG:?set CONFIG, e.g. experiments/configs/paper.py:d=8}"
    : "${WORKDIR:?set WORKDIR, e.g. gs://my-bucket/tgmm (shared by all hosts)}"
    id="$(stable_run_id)"
    log_dir="~/tgmm_logs/$id"
    remote all "mkdir -p $log_dir && cd ~/tgmm-jax && nohup ~/tgmm-venv/bin/python -m experiments.train \
      --config='$CONFIG' --workdir='$WORKDIR/$id' ${EXTRA_ARGS:-} \
      > $log_dir/host_\$(hostname).log 2>&1 < /dev/null &"
    echo "run id: $id  workdir: $WORKDIR/$id  logs: $log_dir/host_*.log"
    ;;
  logs)
    id="$(stable_run_id)"
    remote "${ARGS[0]:-0}" "tail -n 50 -f ~/tgmm_logs/$id/host_*.log"
    ;;
  kill)
    remote all "pkill -f experiments.train || true"
    ;;
  delete)
    gcloud_tpu delete "${TPU_NAME:?set TPU_NAME}" --quiet
    ;;
  help)
    usage
    ;;
esac
