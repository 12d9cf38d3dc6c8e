#!/usr/bin/env bash
# Start the deployment (docker-compose.yml) for real and check what a site relies on. From a clean clone, as root:
#   deploy/smoke-test.sh
# - starts the Docker engine if none answers (exit 77 where none can start: no dockerd, or it will not run);
# - images: the three of PNEUMOSCAN_BASE_IMAGE, REDIS_IMAGE and POSTGRES_IMAGE given in the environment, else
#   deploy/offline-images.sh's local stand-ins (no registry needed; built once, then kept by dockerd);
# - builds the pneumoscan image (BuildKit, pip's cache mount: a rebuild after a source change reuses every
#   dependency layer) and starts the stack with two workers and a storescp on the host as the results destination;
# - drops PNGs into the inbox, C-STOREs a DX chest study to the published port with dcmtk's storescu, reads the
#   results through the REST API with a token made inside the web container, and sees the study's SR arrive;
# - docker kills one worker container mid-batch and sees, through the API, every file done exactly once;
# - shows the worker's and the web app's healthchecks go unhealthy when their service is broken, and recover;
# - tears everything down (volumes included); the images stay as the next run's cache.
# Prints the image size, the time from `up` to the first result, and the wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
log() { echo "smoke: [$((SECONDS - started))s] $*"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
skip() { echo "smoke: SKIP: $*"; exit 77; }

# --- the engine ---------------------------------------------------------------------------------------------
command -v docker >/dev/null || skip "no docker client"
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || skip "no Docker engine answers and dockerd is not installed (apt-get install docker.io docker-compose)"
  [[ $(id -u) == 0 ]] || skip "no Docker engine answers and only root can start one"
  # A dockerd ended without its cleanup (CI ends what a session left running) leaves its pid files behind.
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    [[ -f $pidfile ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null && rm -f "$pidfile"
  done
  log "starting dockerd (log: /var/log/pneumoscan-dockerd.log)"
  nohup dockerd >/var/log/pneumoscan-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -5 /var/log/pneumoscan-dockerd.log; skip "dockerd did not start here"; }
fi
if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then compose_cmd=(docker-compose)
else skip "neither 'docker compose' nor docker-compose is installed"; fi
for tool in storescu storescp curl python3; do command -v $tool >/dev/null || fail "$tool is missing (dcmtk, curl, python3)"; done

# A client that builds with BuildKit: one with buildx, else one whose builder is built in (Docker 18.09 to 22).
builder=""
if docker buildx version >/dev/null 2>&1; then builder=docker
else
  for client in $(type -ap docker); do
    case $("$client" version -f '{{.Client.Version}}' 2>/dev/null) in 18.09*|19.*|20.*|21.*|22.*) builder=$client; break;; esac
  done
fi

# --- images --------------------------------------------------------------------------------------------------
if [[ -z ${PNEUMOSCAN_BASE_IMAGE:-} || -z ${REDIS_IMAGE:-} || -z ${POSTGRES_IMAGE:-} ]]; then
  log "offline stand-ins for the base, Redis and PostgreSQL images"
  eval "$(deploy/offline-images.sh)"
fi
export PNEUMOSCAN_BASE_IMAGE REDIS_IMAGE POSTGRES_IMAGE
export PNEUMOSCAN_IMAGE=${PNEUMOSCAN_IMAGE:-pneumoscan:smoke}
log "building $PNEUMOSCAN_IMAGE on $PNEUMOSCAN_BASE_IMAGE"
build_start=$SECONDS
if [[ -n $builder ]]; then
  DOCKER_BUILDKIT=1 nice "$builder" build -q --build-arg "PNEUMOSCAN_BASE_IMAGE=$PNEUMOSCAN_BASE_IMAGE" \
    -t "$PNEUMOSCAN_IMAGE" . >/dev/null
else  # no BuildKit: the same Dockerfile without the cache mount
  sed 's/--mount=type=cache[^ ]* //' Dockerfile > /tmp/pneumoscan-smoke.Dockerfile
  DOCKER_BUILDKIT=0 nice docker build -q -f /tmp/pneumoscan-smoke.Dockerfile \
    --build-arg "PNEUMOSCAN_BASE_IMAGE=$PNEUMOSCAN_BASE_IMAGE" -t "$PNEUMOSCAN_IMAGE" . >/dev/null
fi
image_mb=$(( $(docker image inspect -f '{{.Size}}' "$PNEUMOSCAN_IMAGE") / 1000000 ))
log "built in $((SECONDS - build_start)) s; image $image_mb MB"

# --- the site: inbox, secrets, ports -------------------------------------------------------------------------
work=$(mktemp -d /tmp/pneumoscan-smoke.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/inbox" "$work/stage" "$work/sink"
chmod 777 "$work/stage"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
web_port=$(free_port); dicom_port=$(free_port); sink_port=$(free_port)
secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
cat > "$work/smoke.env" <<ENV
POSTGRES_PASSWORD=$(secret)
PNEUMOSCAN_PATIENT_SALT=$(secret)
PNEUMOSCAN_SECRET_KEY=$(secret)
INBOX=$work/inbox
PNEUMOSCAN_WEB_PORT=$web_port
PNEUMOSCAN_DICOM_PORT=$dicom_port
PNEUMOSCAN_RESULTS_DESTINATION=SINK@host.docker.internal:$sink_port
PNEUMOSCAN_DICOM_ALLOWED_AES=SMOKESCU
PNEUMOSCAN_STUDY_STABLE_SECONDS=5
PNEUMOSCAN_BATCH_SIZE=16
PNEUMOSCAN_MAX_BATCH_WAIT=1
PNEUMOSCAN_QUIET_PERIOD=1
PNEUMOSCAN_REQUEUE_AFTER=15
WORKER_CONCURRENCY=1
HEALTHCHECK_INTERVAL=5s
ENV
chmod 600 "$work/smoke.env"
project=pneumoscan-smoke
compose() { "${compose_cmd[@]}" --project-name "$project" --env-file "$work/smoke.env" \
  -f docker-compose.yml -f deploy/smoke/docker-compose.smoke.yml "$@"; }
sink_pid=""
teardown() {
  local rc=$?
  if ((rc != 0 && rc != 77)); then
    log "failed; the stack's last log lines:"; compose logs --tail 40 2>&1 | tail -120 || true
  fi
  log "tearing down"
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  [[ -n $sink_pid ]] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
  log "wall time $((SECONDS - started)) s"
}
trap teardown EXIT
compose down -v --remove-orphans >/dev/null 2>&1 || true  # a run killed before its teardown

storescp -aet SINK -od "$work/sink" "$sink_port" >"$work/storescp.log" 2>&1 &
sink_pid=$!

make_inputs() {  # make_inputs ARGS...: deploy/smoke/make_inputs.py inside the image, writing to $work/stage
  docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/tests:/src/tests:ro" \
    -v "$PWD/deploy/smoke/make_inputs.py:/src/make_inputs.py:ro" -v "$work/stage:/stage" -w /src \
    --entrypoint python "$PNEUMOSCAN_IMAGE" make_inputs.py /stage "$@"
}
drop() {  # drop PREFIX COUNT START: PNGs moved into the inbox whole
  make_inputs "$1" "$2" "$3" >/dev/null
  chmod 644 "$work/stage/$1"-*.png
  mv "$work/stage/$1"-*.png "$work/inbox/"
}

# --- up ------------------------------------------------------------------------------------------------------
log "compose up, two workers"
up_at=$SECONDS
compose up -d --no-build --scale worker=2 >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up"; }
mapfile -t workers < <(compose ps -q worker)
((${#workers[@]} == 2)) || fail "expected 2 worker containers, got ${#workers[@]}"

log "a token made inside the web container"
password=$(secret)
for _ in $(seq 60); do
  curl -fsS "http://127.0.0.1:$web_port/health" >/dev/null 2>&1 && break; sleep 1
done
curl -fsS "http://127.0.0.1:$web_port/health" >/dev/null || fail "the web app does not answer on 127.0.0.1:$web_port"
echo "$password" | compose exec -T web pneumoscan users add smoke --role reviewer --password-stdin >/dev/null 2>&1
token=$(compose exec -T web pneumoscan users token smoke 2>/dev/null | tr -d '\r\n')
[[ -n $token ]] || fail "no token"
api() { curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$web_port$1"; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$web_port/api/results")
[[ $code == 401 ]] || fail "/api/results without a token answered $code, not 401"
# count GLOB STATUS: how many results whose path matches GLOB have STATUS, through the API
count() { api "/api/results?limit=500&path=$1&status=$2" 2>/dev/null \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo 0; }

log "drop 8 PNGs into the inbox"
first=8
drop first "$first" 0
for _ in $(seq 600); do
  n=$(count '*/inbox/first-*' done) && ((n >= 1)) && break; sleep 0.5
done
((n >= 1)) || fail "no result 300 s after up"
first_result_s=$((SECONDS - up_at))
log "first result through the API $first_result_s s after 'up'"

log "C-STORE a 2-instance DX chest study to the published port"
make_inputs study 2 > "$work/study_uid"
study_uid=$(tr -d '\r\n' < "$work/study_uid")
storescu -aet SMOKESCU -aec PNEUMOSCAN 127.0.0.1 "$dicom_port" "$work"/stage/study-*.dcm \
  || fail "storescu to 127.0.0.1:$dicom_port"
code=0; storescu -aet INTRUDER -aec PNEUMOSCAN 127.0.0.1 "$dicom_port" "$work"/stage/study-0.dcm \
  >/dev/null 2>&1 || code=$?
((code != 0)) || fail "a calling AE outside the allow-list was accepted"

log "drop 96 more PNGs; freeze the worker holding a batch, show the batch is its own, kill it"
batch=96
drop batch "$batch" 100
# Read-only looks at the outbox: the rows a worker claimed and has not stored yet (only to show the kill's timing).
sql() { docker exec "$(compose ps -q postgres)" psql -U pneumoscan -d pneumoscan -tAc "$1"; }
tasks() { docker logs "$1" 2>&1 | grep -Ec "classify_batch\\[.*\\] $2" || true; }
victim=""
for _ in $(seq 100); do
  for w in "${workers[@]}"; do
    if (($(tasks "$w" received) > $(tasks "$w" '(succeeded|failed|retry)'))); then victim=$w; break; fi
  done
  if [[ -n $victim ]]; then
    # The cgroup freezer can refuse while a process is mid-fork: try again.
    for _ in $(seq 20); do docker pause "$victim" >/dev/null 2>&1 && break; sleep 0.1; done
    [[ $(docker inspect -f '{{.State.Paused}}' "$victim") == true ]] || fail "cannot freeze ${victim:0:12}"
    frozen_at=$(sql "select now()")
    survivor=${workers[0]}; [[ $survivor == "$victim" ]] && survivor=${workers[1]}
    survivor_started=$(tasks "$survivor" received)
    # Once the other worker has finished every batch it had started before the freeze, the files claimed
    # before the freeze and still unsettled can only be the frozen worker's.
    for _ in $(seq 100); do (($(tasks "$survivor" '(succeeded|failed|retry)') >= survivor_started)) && break; sleep 0.1; done
    sql "select path from queued_files where claimed_at < '$frozen_at'" > "$work/in_flight"
    (($(tasks "$survivor" '(succeeded|failed|retry)') >= survivor_started)) && [[ -s $work/in_flight ]] && break
    docker unpause "$victim" >/dev/null
    victim=""
  fi
  sleep 0.2
done
[[ -n $victim ]] || fail "never caught a worker with a batch in flight"
in_flight=$(grep -c . "$work/in_flight")
done_at_kill=$(count '*/inbox/batch-*' done)
docker kill "$victim" >/dev/null
killed_at=$SECONDS
log "killed worker ${victim:0:12} in the middle of a batch: $done_at_kill of $batch done, its $in_flight files claimed and not stored"

total=$((first + batch))
for _ in $(seq 300); do
  n=$(count '*/inbox/*' done); ((n >= total)) && break; sleep 1
done
api "/api/results?limit=500&path=*/inbox/*" > "$work/inbox.json"
python3 - "$work/inbox.json" "$total" <<'PY' || fail "not every inbox file was done exactly once"
import collections, json, sys
page, total = json.load(open(sys.argv[1])), int(sys.argv[2])
rows = page["results"]
paths = collections.Counter(r["path"] for r in rows)
shas = collections.Counter(r["sha256"] for r in rows)
statuses = collections.Counter(r["status"] for r in rows)
print(f"smoke: {len(rows)} results for {total} files; statuses {dict(statuses)}; "
      f"paths seen twice {sum(1 for c in paths.values() if c > 1)}; contents twice {sum(1 for c in shas.values() if c > 1)}")
assert page["total"] == len(rows) == total, (page["total"], len(rows), total)
assert all(c == 1 for c in paths.values()) and all(c == 1 for c in shas.values())
assert all(r["paths"] == 1 for r in rows), "a file was sighted at more than its one path"
assert statuses == {"done": total}, statuses
assert all(r["label"] in ("NORMAL", "PNEUMONIA") and r["model_version"] for r in rows)
PY
log "every one of the $total inbox files done exactly once, through the API, $((SECONDS - killed_at)) s after the kill"
while read -r path; do
  [[ -z $path ]] && continue
  # A held file outside the inbox (a received study's instance) may still be waiting for the reaper to send it
  # again: wait for it as for the inbox files above, then hold it to exactly once.
  for _ in $(seq 300); do (($(count "$path" done) >= 1)) && break; sleep 1; done
  [[ $(count "$path" done) == 1 ]] || fail "$path, in flight at the kill, is not done exactly once"
done < "$work/in_flight"
log "each of the $in_flight files the killed worker held done once"

log "the study's results and its SR at the destination"
for _ in $(seq 180); do
  n=$(count "*/received/*" done); ((n >= 2)) && ls "$work/sink" | grep -q . && break; sleep 1
done
((n >= 2)) || fail "the received study's 2 instances were not classified ($n)"
api "/api/studies" > "$work/studies.json"
python3 - "$work/studies.json" "$study_uid" <<'PY' || fail "the study through the API"
import json, sys
studies = [s for s in json.load(open(sys.argv[1])) if s.get("study_uid") == sys.argv[2]]
assert studies, "the study is not listed"
print("smoke: study", {k: v for k, v in studies[0].items() if k != "study_uid"})
PY
ls "$work/sink" | grep -q '^SR' || { ls -l "$work/sink"; cat "$work/storescp.log"; fail "no SR arrived at the storescp destination"; }
log "SR received by storescp: $(ls "$work/sink" | grep '^SR' | head -1)"

log "healthchecks: a stopped worker process and an unreachable database go unhealthy"
health() { docker inspect -f '{{.State.Health.Status}}' "$1"; }
live=$survivor
web=$(compose ps -q web)
postgres=$(compose ps -q postgres)
for _ in $(seq 60); do [[ $(health "$live") == healthy && $(health "$web") == healthy ]] && break; sleep 2; done
[[ $(health "$live") == healthy && $(health "$web") == healthy ]] || fail "worker $(health "$live"), web $(health "$web") before the break"
kill -STOP "$(docker inspect -f '{{.State.Pid}}' "$live")"
docker stop "$postgres" >/dev/null
for _ in $(seq 90); do [[ $(health "$live") == unhealthy && $(health "$web") == unhealthy ]] && break; sleep 2; done
log "broken: worker $(health "$live"), web $(health "$web")"
[[ $(health "$live") == unhealthy && $(health "$web") == unhealthy ]] || fail "a broken service stayed healthy"
kill -CONT "$(docker inspect -f '{{.State.Pid}}' "$live")"
docker start "$postgres" >/dev/null
for _ in $(seq 90); do [[ $(health "$live") == healthy && $(health "$web") == healthy ]] && break; sleep 2; done
log "mended: worker $(health "$live"), web $(health "$web")"
[[ $(health "$live") == healthy && $(health "$web") == healthy ]] || fail "a mended service stayed unhealthy"

echo "smoke: PASS: image $image_mb MB; first result $first_result_s s after up; $total inbox files once each with a worker killed mid-batch; SR delivered; worker and web healthchecks go unhealthy and recover"
