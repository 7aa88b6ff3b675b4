#!/bin/sh
# The compose proxy (docker-compose.yml, service `proxy`): nginx on the config the pipeline renders, reloaded when
# the pipeline rewrites it.
#
# How a change reaches this container: the pipeline renders nginx.conf (pipeline.live.proxy.render_config, from
# configs/proxy/nginx.conf.template) and writes it atomically (a rename) into $PROXY_DIR, a volume that the Airflow
# containers and this one mount at the same path, so every path in it (pid, logs, temp) names the same file in
# both. This script starts nginx on it, then compares the file's inode, mtime (nanoseconds) and size every
# $PROXY_WATCH_INTERVAL_S seconds. On a change it runs `nginx -t` on the new file and, when nginx accepts it, sends
# the master SIGHUP (a reload): old workers finish their requests, new ones take the new split. A refused file
# leaves the running config in place. Either way $PROXY_DIR/reload.status says what became of the last change
# ("<signature> ok": checked and signalled, or "<signature> refused: <nginx's message>"); the generation in effect
# is the X-Proxy-Config header of GET /_proxy/health, which is what the pipeline waits on.
#
# Environment: PROXY_DIR (required), PROXY_WATCH_INTERVAL_S (default 1), NGINX (the binary, default nginx).
set -eu

dir="${PROXY_DIR:?set PROXY_DIR to the directory the pipeline renders nginx.conf into}"
conf="$dir/nginx.conf"
status="$dir/reload.status"
interval="${PROXY_WATCH_INTERVAL_S:-1}"
nginx="${NGINX:-nginx}"

log() { printf '%s proxy-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
signature() { stat -c '%i %y %s' "$conf" 2>/dev/null || echo missing; }
# -e: nginx opens its error log before reading the config; point it into $PROXY_DIR, never the image's default.
run_nginx() { "$nginx" -p "$dir/" -c "$conf" -e "$dir/error.log" "$@"; }
record() {  # atomically, so the pipeline never reads half a line
  printf '%s\n' "$1" > "$status.tmp" && mv -f "$status.tmp" "$status"
}

waited=0
while [ ! -s "$conf" ]; do
  [ $((waited % 30)) -eq 0 ] && log "waiting for $conf (airflow-init writes the first one)"
  waited=$((waited + 1))
  sleep 1
done
for temp in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$dir/temp/$temp"; done

seen=$(signature)
if ! output=$(run_nginx -t -q 2>&1); then
  record "$seen refused: $output"
  log "nginx refused $conf: $output"
  exit 1
fi
# Not through run_nginx: a function run with & is a subshell, and $! would be its pid, not the master's. The
# rendered config says `daemon off`, so this process is the master.
"$nginx" -p "$dir/" -c "$conf" -e "$dir/error.log" &
master=$!
record "$seen ok"
log "nginx $master serves $conf"

stop() {
  log "stopping nginx gracefully (requests in flight finish)"
  kill -QUIT "$master" 2>/dev/null || true
  code=0
  wait "$master" || code=$?
  exit "$code"
}
trap stop TERM INT QUIT

while kill -0 "$master" 2>/dev/null; do
  sleep "$interval" &
  wait $! || true  # a signal interrupts this wait at once, unlike a foreground sleep
  now=$(signature)
  [ "$now" = "$seen" ] && continue
  seen=$now
  if output=$(run_nginx -t -q 2>&1); then
    kill -HUP "$master"  # what `nginx -s reload` sends, without re-reading the pid file
    record "$seen ok"
    log "reloaded $conf"
  else
    record "$seen refused: $output"
    log "kept the running config; nginx refused $conf: $output"
  fi
done
# nginx exited on its own: so does the container (compose restarts it).
code=0
wait "$master" || code=$?
log "nginx exited with $code"
exit "$code"
