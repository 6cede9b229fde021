# shellcheck shell=bash
# Background processes for the scripts that start a local cluster (scripts/demo.sh,
# bench/gateway_bench.sh). Source it after defining `log`. Each process's stdout goes to
# $workdir/NAME.out (the lines the services print: "listening on ...", "serving ...") and its
# stderr to $workdir/NAME.log; on exit every process is stopped, newest first, and on failure the
# tail of each log is shown.
#
#   start_process [--tee] NAME COMMAND [ARGS...]   # sets $last_pid; --tee: stderr also to ours
#   wait_line NAME PREFIX SECONDS          # prints the rest of NAME's first stdout line that
#                                          # starts with PREFIX; fails when NAME exits first
#   wait_ready HTTP_ADDRESS SECONDS        # until GET /ready answers 200
#   trap_exit [0|130]                      # what Ctrl-C means: a normal end (0) or an abort

workdir=$(mktemp -d)
declare -A pid_of=()
pids=()

start_process() {
  local tee=0
  if [[ $1 == --tee ]]; then
    tee=1
    shift
  fi
  local name=$1
  shift
  if ((tee)); then
    "$@" >"$workdir/$name.out" 2> >(tee "$workdir/$name.log" >&2) &
  else
    "$@" >"$workdir/$name.out" 2>"$workdir/$name.log" &
  fi
  last_pid=$!
  pid_of[$name]=$last_pid
  pids+=("$last_pid")
}

wait_line() {
  local name=$1 prefix=$2 seconds=$3 line
  local deadline=$((SECONDS + seconds))
  while ((SECONDS < deadline)); do
    line=$(grep -m1 "^$prefix" "$workdir/$name.out" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "${line#"$prefix"}"
      return 0
    fi
    if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
      log "$name exited (log: $workdir/$name.log)"
      return 1
    fi
    sleep 0.1
  done
  log "$name printed no '$prefix' line within ${seconds}s"
  return 1
}

wait_ready() {
  local address=$1 seconds=$2
  local deadline=$((SECONDS + seconds))
  until curl -fsS "http://$address/ready" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "http://$address/ready did not answer 200 within ${seconds}s"
      return 1
    fi
    sleep 0.1
  done
}

stop_processes() {
  local rc=$? i f
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    for f in "$workdir"/*.log; do
      [[ -s $f ]] || continue
      echo "--- $(basename "$f") ---" >&2
      tail -n 10 "$f" >&2
    done
  fi
  rm -rf "$workdir"
  exit "$rc"
}

trap_exit() {
  trap stop_processes EXIT
  # shellcheck disable=SC2064
  trap "exit ${1:-130}" INT TERM
}
