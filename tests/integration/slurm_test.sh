#!/usr/bin/env bash
# deploy/slurm under a real Slurm: a one-node cluster on this machine (munged,
# slurmctld and slurmd from Debian 12's munge and slurm-wlm; a generated
# slurm.conf, CPU only; every file under one temporary directory, free ports)
# runs the two sbatch scripts:
#
#  a. a coordinator started here; kvtune-workers.sbatch as an array of 2 tasks
#     with one CPU worker each (KVTUNE_DEVICE=cpu, --gres=none, no CURVE); a
#     search on stories260K to the end; then `scancel --batch --signal=TERM`, as
#     the script says: each worker says goodbye and hands nothing back, each
#     task exits 0.
#  b. kvtune-coordinator.sbatch (its store in a "shared" directory, CURVE) and
#     the workers script again; `scontrol requeue` of the coordinator
#     mid-search: it starts again on its store and the search ends with the
#     frontier of a, which was not interrupted.
#
# Then it cancels the jobs, stops the daemons and checks that no process it
# started is left. It skips (exit 77, saying why) only where munge or
# slurm-wlm is not installed (scripts/install-deps.sh --optional slurm), where
# it is not root (slurmd starts jobs as their user), where the daemons cannot
# start here, or without ../shared's stories260K.
#
# usage: slurm_test.sh BUILD_DIR SOURCE_DIR SHARED_DIR
#   BUILD_DIR holds kvtune and kvtune-worker. KVTUNE_SLURM_TEST_KEEP=1 keeps
#   the temporary directory (logs, job outputs) and says where it is.
set -euo pipefail
shopt -s inherit_errexit

if [ $# -ne 3 ] || [ ! -d "$1" ] || [ ! -d "$2" ]; then
  echo "usage: $0 BUILD_DIR SOURCE_DIR SHARED_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
shared=$3
[ -d "$shared" ] && shared=$(cd "$shared" && pwd)
model="$shared/models/stories260K.bin"
kvtune="$build/kvtune"
readonly SKIP=77
t0=$SECONDS
# The whole run, teardown excluded (at most ~30 s more): CTest's TIMEOUT for
# this test is above both, so the teardown always runs.
deadline=$((SECONDS + 150))

# Progress on stdout; skips and failures on stderr, seen from inside $(...) too.
say() { printf '[slurm %3ds] %s\n' "$((SECONDS - t0))" "$*"; }
skip() {
  say "SKIPPED: $*" >&2
  exit "$SKIP"
}
fail() {
  say "FAILED: $*" >&2
  exit 1
}

# --- what this test needs ----------------------------------------------------

export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for p in munged munge unmunge slurmctld slurmd sbatch scontrol squeue scancel sinfo jq; do
  command -v "$p" > /dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  skip "no ${missing[*]}: munge, slurm-wlm or jq are not installed" \
    "(bash scripts/install-deps.sh --optional slurm installs them)"
fi
if [ "$(id -u)" -ne 0 ]; then
  skip "not root: slurmd runs the jobs as their user, and only root can"
fi
[ -f "$model" ] || skip "$model is absent here; this test needs the shared folder beside the checkout"
for f in "$kvtune" "$build/kvtune-worker"; do
  [ -x "$f" ] || fail "$f is not built"
done

keep=${KVTUNE_SLURM_TEST_KEEP:-}
# A clean environment: nothing from a Slurm job this may run in, nor kvtune
# settings of the caller's; HOME and caches in the temporary directory.
while read -r name; do
  case "$name" in
    SLURM_* | SBATCH_* | SALLOC_* | SRUN_* | SQUEUE_* | SINFO_* | SCONTROL_* | KVTUNE_* | XDG_*) unset "$name" ;;
  esac
done < <(compgen -e)

# In /tmp, not TMPDIR: munged wants the directories of its socket searchable
# by everyone.
tmp=$(mktemp -d /tmp/kvtune-slurm.XXXXXX)
chmod 755 "$tmp"
# Every process this test starts carries this variable: the teardown finds
# what is left by it.
export KVTUNE_SLURM_TEST="$tmp"
export HOME="$tmp/home" KVTUNE_CACHE_DIR="$tmp/cache" SLURM_CONF="$tmp/slurm/slurm.conf"
mkdir -p "$HOME" "$KVTUNE_CACHE_DIR" "$tmp/log" "$tmp/slurm/state" "$tmp/slurm/spool" \
  "$tmp/prefix/bin" "$tmp/a" "$tmp/b/shared" "$tmp/keys/workers"
mkdir -m 700 "$tmp/munge"
mkdir -m 755 "$tmp/munge-run"
# KVTUNE_PREFIX of the scripts: their `kvtune` is this build's.
ln -s "$kvtune" "$build/kvtune-worker" "$tmp/prefix/bin/"

# --- helpers -------------------------------------------------------------------

# Whether PID runs (a zombie does not).
alive() {
  local stat
  { read -r stat < "/proc/$1/stat"; } 2> /dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The Slurm jobs that must stay queued or running while the test waits, as
# JOBID:TASKS, and the file of each job's first task's output.
must_run=()
declare -A output_of=()
check_running() {
  local job out n
  for job in "${must_run[@]}"; do
    out=$(squeue -h -r -j "${job%:*}" -o %i 2> /dev/null) || continue  # slurmctld busy
    n=$(grep -c . <<< "$out" || true)
    if ((n != ${job#*:})); then
      fail "Slurm job ${job%:*} has $n of its ${job#*:} tasks left:"$'\n'"$(tail -n 20 "${output_of[${job%:*}]}")"
    fi
  done
}

# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, else fail.
wait_for() {
  local what=$1 limit=$((SECONDS + $2))
  shift 2
  until "$@"; do
    check_running
    if ((SECONDS >= limit || SECONDS >= deadline)); then fail "timed out waiting for $what"; fi
    sleep 0.3
  done
}

# free_port VAR: a loopback TCP port nobody listens on (below the ephemeral
# range), other than those given before.
ctld_port="" slurmd_port="" a_api="" a_bind="" b_api="" b_bind=""
taken=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [[ "$taken" == *" $p "* ]] && continue
    if ! (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null; then
      taken+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
}

# The job ID of `sbatch --parsable` ("ID" or "ID;CLUSTER").
submit() {
  local out
  out=$(sbatch --parsable "$@") || fail "sbatch $* failed"
  printf '%s\n' "${out%%;*}"
}

# `kvtune status ID` of the coordinator at API (fails while it is down).
status_of() { "$kvtune" status "$2" --api "$1" 2> /dev/null; }
# A line's second word in that status: state, progress ("13/120").
field_of() { awk -v f="$1" '$1 == f { print $2; exit }'; }
api_up() { "$kvtune" jobs --api "$1" > /dev/null 2>&1; }
# "STATE DONE/TOTAL" of job $2 from `kvtune jobs` (lighter than its status).
row_of() {
  "$kvtune" jobs --api "$1" 2> /dev/null | awk -v id="$2" '$1 == id { print $3, $4; exit }'
}

# A job's state, failing at once on failed or cancelled.
state_is() {
  local state
  state=$(row_of "$1" "$2") || return 1
  state=${state%% *}
  case "$state" in
    failed | cancelled) fail "job $2 is $state: $(status_of "$1" "$2")" ;;
  esac
  [ "$state" = "$3" ]
}

# The frontier of a finished search, one {layers, metrics} object a line.
frontier_of() {
  "$kvtune" status "$2" --api "$1" --json | jq -ec '.frontier[] | {layers, metrics}'
}

# The distinct workers that returned results of a job.
workers_of() {
  "$kvtune" status "$2" --api "$1" --json | jq -r '.. | .worker? // empty' | sort -u | wc -l
}

# Every (array) task of Slurm job $1 is over.
slurm_job_over() {
  local out
  out=$(squeue -h -j "$1" -o %T 2> /dev/null) || return 1
  [ -z "$out" ]
}

# The output of `scontrol show job` for every task of a job: each must have
# ended as $2 with exit code 0.
check_tasks_ended() {
  local out states codes n=$3
  out=$(scontrol show job "$1")
  states=$(grep -o 'JobState=[A-Z_]*' <<< "$out" | sort | uniq -c | awk '{$1=$1; print}')
  codes=$(grep -o ' ExitCode=[0-9:]*' <<< "$out" | sort | uniq -c | awk '{$1=$1; print}')
  [ "$states" = "$n JobState=$2" ] || fail "Slurm job $1: expected $n tasks $2, found: $states"
  [ "$codes" = "$n ExitCode=0:0" ] || fail "Slurm job $1: expected exit codes 0, found: $codes"
}

# The worker output of one array task: the script's stop, the worker's
# goodbye with nothing handed back. Prints the goodbye line.
check_goodbye() {
  local file=$1 id=$2
  [ -f "$file" ] || fail "no worker output $file"
  grep -q "^kvtune-workers: signal received, stopping 1 workers" "$file" ||
    fail "$file: the script did not forward the signal:"$'\n'"$(tail -n 20 "$file")"
  grep -qx "kvtune worker $id: goodbye" "$file" ||
    fail "$file: no goodbye of $id without a task handed back:"$'\n'"$(tail -n 20 "$file")"
  if grep -Eq "hand(ed|ing) back|second signal" "$file"; then
    fail "$file: a task was handed back: $(grep -E "hand(ed|ing) back|second signal" "$file")"
  fi
  grep -q "^kvtune-workers: all 1 workers stopped (exit status 0)" "$file" ||
    fail "$file: the workers did not exit 0:"$'\n'"$(tail -n 20 "$file")"
  grep -x "kvtune worker $id: goodbye" "$file"
}

# Stops the workers' array $2 of scenario $1 as the script documents (scancel
# --batch --signal=TERM) and checks that both tasks ended well and said goodbye.
stop_workers() {
  local scenario=$1 job=$2 t line
  must_run=()
  scancel --batch --signal=TERM "$job" || fail "scancel --batch --signal=TERM $job failed"
  wait_for "the workers ($scenario) to stop" 30 slurm_job_over "$job"
  check_tasks_ended "$job" COMPLETED 2
  for t in 0 1; do
    line=$(check_goodbye "$tmp/$scenario/kvtune-workers-${job}_$t.out" "slurm-$job-$t-cpu0")
    say "$scenario: task $t: $line"
  done
}

# --- teardown -------------------------------------------------------------------

munged_pid="" slurmctld_pid="" slurmd_pid="" coordinator_pid=""

# stop PID NAME: SIGTERM, then SIGKILL after 10 s; reaps it.
stop() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2> /dev/null
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    say "teardown: $2 ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2> /dev/null
  fi
  wait "$pid" 2> /dev/null
  return 0
}

# The processes of this test (not this shell): those that carry
# KVTUNE_SLURM_TEST=$tmp (the daemons, the jobs), and the slurmstepd of a job,
# which does not but holds slurmd's log open.
ours() {
  local dir pid line fd
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    while IFS= read -r -d '' line; do
      if [ "$line" = "KVTUNE_SLURM_TEST=$tmp" ]; then
        echo "$pid"
        continue 2
      fi
    done 2> /dev/null < "$dir/environ"
    line=""
    { IFS= read -r -d '' line < "$dir/cmdline"; } 2> /dev/null
    [[ "$line" == slurmstepd* ]] || continue
    for fd in "$dir"/fd/*; do
      if [[ "$(readlink "$fd" 2> /dev/null)" == "$tmp/"* ]]; then
        echo "$pid"
        break
      fi
    done
  done
}

teardown() {
  local rc=$? pid i left=()
  trap - EXIT INT TERM
  set +e
  stop "$coordinator_pid" "the coordinator"
  if [ -n "$slurmctld_pid" ] && alive "$slurmctld_pid"; then
    # What a failure left running: cancelled (SIGTERM, SIGKILL KillWait later).
    if [ -n "$(squeue -h -o %i 2> /dev/null)" ]; then
      say "teardown: cancelling $(squeue -h -o %i | tr '\n' ' ')"
      scancel --user=root 2> /dev/null
      for ((i = 0; i < 200; i++)); do
        [ -z "$(squeue -h -o %i 2> /dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  stop "$slurmd_pid" slurmd
  stop "$slurmctld_pid" slurmctld
  stop "$munged_pid" munged
  # Nothing this test started may be left: jobs, slurmstepd, daemons.
  sleep 0.2
  mapfile -t left < <(ours)
  if [ ${#left[@]} -gt 0 ]; then
    for pid in "${left[@]}"; do
      say "teardown: left behind: $pid $(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null)"
      kill -KILL "$pid" 2> /dev/null
    done
    ((rc == 0 || rc == SKIP)) && rc=1
    say "FAILED: ${#left[@]} processes outlived the teardown (killed now)"
  else
    say "teardown: no process of this test is left (munged, slurmctld, slurmd, jobs)"
  fi
  if ((rc != 0 && rc != SKIP)); then
    for f in "$tmp"/log/*.log "$tmp"/a/*.out "$tmp"/a/*.log "$tmp"/b/*.out; do
      [ -s "$f" ] || continue
      echo "----- ${f#"$tmp"/} (last 25 lines)"
      tail -n 25 "$f"
    done
  fi
  if [ -n "$keep" ]; then
    say "kept $tmp"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'fail "interrupted"' INT TERM

# --- the cluster -----------------------------------------------------------------

free_port ctld_port
free_port slurmd_port
node=$(uname -n)
node=${node%%.*}
cpus=$(nproc)
# A coordinator and two one-CPU workers run at once: the node says it has at
# least 4 CPUs (config_overrides: slurmd believes slurm.conf).
((cpus >= 4)) || cpus=4
socket="$tmp/munge-run/munge.socket"

dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$tmp/munge/munge.key"
munged --foreground --socket="$socket" --key-file="$tmp/munge/munge.key" \
  --log-file="$tmp/log/munged.log" --pid-file="$tmp/munge/munged.pid" \
  --seed-file="$tmp/munge/munged.seed" > "$tmp/log/munged.out" 2>&1 &
munged_pid=$!
for ((i = 0; ; i++)); do
  munge -n -S "$socket" 2> /dev/null | unmunge -S "$socket" > /dev/null 2>&1 && break
  if ! alive "$munged_pid" || ((i >= 50)); then
    skip "munged cannot start here:"$'\n'"$(tail -n 5 "$tmp/log/munged.out" "$tmp/log/munged.log" 2> /dev/null)"
  fi
  sleep 0.1
done

cat > "$SLURM_CONF" << EOF
# A one-node cluster on loopback for tests/integration/slurm_test.sh.
ClusterName=kvtunetest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$tmp/slurm/state
SlurmdSpoolDir=$tmp/slurm/spool
SlurmctldPidFile=$tmp/slurm/slurmctld.pid
SlurmdPidFile=$tmp/slurm/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups in a container: processes tracked by parent, tasks not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=kvtune Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D > "$tmp/log/slurmctld.out" 2>&1 &
slurmctld_pid=$!
slurmd -D -N "$node" > "$tmp/log/slurmd.out" 2>&1 &
slurmd_pid=$!
for ((i = 0; ; i++)); do
  [ "$(sinfo -h -n "$node" -o %T 2> /dev/null)" = idle ] && break
  if ! alive "$slurmctld_pid" || ! alive "$slurmd_pid" || ((i >= 100)); then
    skip "slurmctld and slurmd cannot start here:"$'\n'"$(tail -n 5 "$tmp/log/slurmctld.log" \
      "$tmp/log/slurmd.log" 2> /dev/null)"
  fi
  sleep 0.2
done
say "cluster up: munged, slurmctld (port $ctld_port), slurmd (port $slurmd_port);" \
  "node $node, $cpus CPUs, $(slurmctld -V)"

# The search of both runs: stories260K, KVTuner's five pairs, 120 evaluations,
# no validation phase.
cat > "$tmp/search.json" << EOF
{"kind": "search", "model": "$model", "data": "sample:8:128:0", "validation_data": "none",
 "search": {"candidates": ["KV8", "K8V4", "KV4", "K4V2", "KV2"], "max_bits": 8,
            "max_evaluations": 120, "seed": 0}}
EOF
submit_search() {
  local id
  id=$("$kvtune" submit "$tmp/search.json" --api "$1") || fail "kvtune submit failed"
  [[ "$id" =~ ^job-[0-9a-z-]+$ ]] || fail "kvtune submit printed '$id', not a job id"
  printf '%s\n' "$id"
}

# --- a. CPU workers as a job array, stopped gracefully ---------------------------

free_port a_api
free_port a_bind
"$kvtune" coordinator --db "$tmp/a/db" --api "127.0.0.1:$a_api" --bind "tcp://127.0.0.1:$a_bind" \
  > "$tmp/a/coordinator.log" 2>&1 &
coordinator_pid=$!
wait_for "the coordinator's API" 30 api_up "127.0.0.1:$a_api"

wa=$(cd "$tmp/a" && KVTUNE_COORDINATOR="tcp://127.0.0.1:$a_bind" KVTUNE_DEVICE=cpu KVTUNE_WORKERS=1 \
  KVTUNE_KEYS=none KVTUNE_PREFIX="$tmp/prefix" \
  submit --gres=none --cpus-per-task=1 --array=0-1 "$src/deploy/slurm/kvtune-workers.sbatch")
say "a: coordinator on 127.0.0.1:$a_api; workers: sbatch --gres=none --cpus-per-task=1" \
  "--array=0-1 kvtune-workers.sbatch (KVTUNE_DEVICE=cpu): job $wa"
must_run=("$wa:2")
output_of[$wa]="$tmp/a/kvtune-workers-${wa}_0.out"
a_id=$(submit_search "127.0.0.1:$a_api")
wait_for "search $a_id (a)" 120 state_is "127.0.0.1:$a_api" "$a_id" "done"
a_status=$(status_of "127.0.0.1:$a_api" "$a_id")
say "a: search $a_id done: $(grep '^search' <<< "$a_status")"
[ "$(field_of progress <<< "$a_status")" = 120/120 ] || fail "a: progress $(field_of progress <<< "$a_status")"
n=$(workers_of "127.0.0.1:$a_api" "$a_id")
[ "$n" -eq 2 ] || fail "a: results came from $n workers, not the 2 Slurm workers"
frontier_of "127.0.0.1:$a_api" "$a_id" > "$tmp/a/frontier" || fail "a: no frontier in the job's JSON"
[ "$(wc -l < "$tmp/a/frontier")" -ge 10 ] || fail "a: a frontier of $(wc -l < "$tmp/a/frontier") configs"

stop_workers a "$wa"
for t in 0 1; do
  grep -q "worker slurm-$wa-$t-cpu0 says goodbye" "$tmp/a/coordinator.log" ||
    fail "a: the coordinator did not hear slurm-$wa-$t-cpu0's goodbye"
done
if grep -q "handed back" "$tmp/a/coordinator.log"; then
  fail "a: the coordinator got a task back: $(grep "handed back" "$tmp/a/coordinator.log")"
fi
stop "$coordinator_pid" "the coordinator"
coordinator_pid=""

# --- b. the coordinator as a job, requeued mid-search -----------------------------

for key in coordinator worker; do
  "$kvtune" keygen --out "$tmp/keys/$key.key" > "$tmp/log/keygen.log" 2>&1 ||
    fail "kvtune keygen failed: $(cat "$tmp/log/keygen.log")"
done
cp "$tmp/keys/worker.key.pub" "$tmp/keys/workers/"
free_port b_api
free_port b_bind
b_db="$tmp/b/shared/kvtune.db"
cjob=$(cd "$tmp/b" && KVTUNE_DB="$b_db" KVTUNE_API="127.0.0.1:$b_api" KVTUNE_BIND="tcp://127.0.0.1:$b_bind" \
  KVTUNE_KEYS="$tmp/keys" KVTUNE_PREFIX="$tmp/prefix" \
  submit --cpus-per-task=1 "$src/deploy/slurm/kvtune-coordinator.sbatch")
coordinator_out="$tmp/b/kvtune-coordinator-$cjob.out"
must_run=("$cjob:1")
output_of[$cjob]=$coordinator_out
wait_for "the coordinator job's API" 30 api_up "127.0.0.1:$b_api"
wb=$(cd "$tmp/b" && KVTUNE_COORDINATOR="tcp://127.0.0.1:$b_bind" KVTUNE_DEVICE=cpu KVTUNE_WORKERS=1 \
  KVTUNE_KEYS="$tmp/keys" KVTUNE_PREFIX="$tmp/prefix" \
  submit --gres=none --cpus-per-task=1 --array=0-1 "$src/deploy/slurm/kvtune-workers.sbatch")
say "b: coordinator: sbatch kvtune-coordinator.sbatch (CURVE, store $b_db): job $cjob;" \
  "workers (CURVE): job $wb"
must_run+=("$wb:2")
output_of[$wb]="$tmp/b/kvtune-workers-${wb}_0.out"
b_id=$(submit_search "127.0.0.1:$b_api")

# Requeued once 40 of its 120 evaluations are done.
progress=""
mid_search() {
  local state
  state=$(row_of "127.0.0.1:$b_api" "$b_id") || return 1
  progress=${state#* }
  state=${state%% *}
  [ "$state" = "done" ] && fail "b: the search ended before the requeue"
  [ "$state" = running ] && [[ "$progress" =~ ^[0-9]+/ ]] && ((${progress%/*} >= 40))
}
wait_for "search $b_id (b) to reach 40 evaluations" 90 mid_search
scontrol requeue "$cjob" || fail "scontrol requeue $cjob failed"
say "b: scontrol requeue $cjob at $progress evaluations"
# Slurm holds a requeued job for cred_expire (120 s): released at once.
restarted() {
  local n
  n=$(grep -c '^kvtune coordinator: API' "$coordinator_out" 2> /dev/null)
  ((${n:-0} >= 2))
}
held() { [ "$(squeue -h -j "$cjob" -o %T 2> /dev/null)" = PENDING ] || restarted; }
wait_for "the coordinator job to be pending again" 40 held
if ! restarted; then
  scontrol update JobId="$cjob" StartTime=now || fail "scontrol update JobId=$cjob StartTime=now failed"
fi
wait_for "the coordinator job to start again" 30 restarted
say "b: the coordinator job runs again: $(grep '^kvtune-coordinator: job' "$coordinator_out" | tail -n 1)"
wait_for "search $b_id (b) after the requeue" 120 state_is "127.0.0.1:$b_api" "$b_id" "done"
b_status=$(status_of "127.0.0.1:$b_api" "$b_id")
say "b: search $b_id done: $(grep '^search' <<< "$b_status")"

# The first run was stopped mid-search: its part of the output does not end the job.
first_run=$(sed -n '/DUE TO JOB REQUEUE/q;p' "$coordinator_out")
grep -q "job $b_id done" <<< "$first_run" && fail "b: the search had ended before the requeue"
grep -q "DUE TO JOB REQUEUE" "$coordinator_out" || fail "b: $coordinator_out shows no requeue"
if grep -q "handed back" "$coordinator_out"; then
  fail "b: the coordinator got a task back: $(grep "handed back" "$coordinator_out")"
fi
frontier_of "127.0.0.1:$b_api" "$b_id" > "$tmp/b/frontier" || fail "b: no frontier in the job's JSON"
if ! cmp -s "$tmp/a/frontier" "$tmp/b/frontier"; then
  fail "b: the frontier after the requeue differs from a's:"$'\n'"$(diff "$tmp/a/frontier" "$tmp/b/frontier")"
fi
[ "$(grep '^search' <<< "$a_status")" = "$(grep '^search' <<< "$b_status")" ] ||
  fail "b: '$(grep '^search' <<< "$b_status")' after the requeue, '$(grep '^search' <<< "$a_status")' without"
say "b: the frontier after the requeue equals a's, config for config and metric for metric" \
  "($(wc -l < "$tmp/b/frontier") configs)"

stop_workers b "$wb"
scancel "$cjob" || fail "scancel $cjob failed"
wait_for "the coordinator job to stop" 30 slurm_job_over "$cjob"
grep -q "kvtune-coordinator: the coordinator exited (status 0)" "$coordinator_out" ||
  fail "b: the coordinator did not stop cleanly:"$'\n'"$(tail -n 5 "$coordinator_out")"
say "passed: a and b in $((SECONDS - t0)) s; tearing down"
