#!/usr/bin/env bash
# `make demo`: the end-to-end setup of internal/e2e left running for a
# person. As root, from the repository root, after `make otelcol jaeger`:
#
#   PostgreSQL 15 (throwaway cluster)  ─┐
#   demoapp server (gRPC shop.Catalog) ─┼─ in one cgroup, the only thing captured
#   demoapp client (a call a second)   ─┘
#   bin/otelcol-ebpf ── OTLP ──► Jaeger v2 (in memory)   + Prometheus endpoint
#
# Everything listens on 127.0.0.1; Ctrl-C stops it all. Ports can be changed
# with DEMO_PG_PORT, DEMO_GRPC_PORT, DEMO_PROM_PORT and Jaeger's own
# JAEGER_OTLP_GRPC_PORT, JAEGER_OTLP_HTTP_PORT, JAEGER_QUERY_HTTP_PORT,
# JAEGER_QUERY_GRPC_PORT (see testdata/jaeger/config.yaml).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=${DEMO_PG_PORT:-55432}
GRPC_PORT=${DEMO_GRPC_PORT:-50051}
PROM_PORT=${DEMO_PROM_PORT:-9464}
export JAEGER_OTLP_GRPC_PORT=${JAEGER_OTLP_GRPC_PORT:-14317}
export JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-14318}
export JAEGER_QUERY_HTTP_PORT=${JAEGER_QUERY_HTTP_PORT:-16686}
export JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685}

die() { echo "demo: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (the collector loads eBPF programs; PostgreSQL runs as the postgres user)"
[[ -x bin/otelcol-ebpf && -x .bin/jaeger ]] || die "run 'make otelcol jaeger' first ('make demo' does)"
[[ -x $PG_BIN/postgres ]] || die "PostgreSQL 15 is missing (apt-get install postgresql-15)"
CG_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[[ -n $CG_ROOT ]] || die "no cgroup v2 hierarchy mounted"

DIR=$(mktemp -d /tmp/ebpfreceiver-demo.XXXXXX)
chmod 755 "$DIR" # PostgreSQL (user postgres) keeps its cluster below it
CG=$CG_ROOT/ebpfreceiver-demo-$$
PIDS=()

cleanup() {
	trap - INT TERM EXIT
	echo
	echo "demo: stopping"
	# Newest first: the client and server, the collector, then Jaeger.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[i]}" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do # 30 s at most
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.3
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [[ -f $DIR/pg/data/postmaster.pid ]]; then
		runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m immediate -w stop >/dev/null || true
	fi
	if [[ -d $CG ]]; then
		for _ in $(seq 1 50); do
			procs=$(cat "$CG/cgroup.procs")
			[[ -z $procs ]] && break
			kill -KILL $procs 2>/dev/null || true
			sleep 0.1
		done
		rmdir "$CG" || true
	fi
	echo "demo: logs were in $DIR (removed)"
	rm -rf "$DIR"
}
trap cleanup INT TERM EXIT

# in_cgroup CMD...: run CMD inside the demo cgroup (the shell moves itself
# there, then execs).
in_cgroup() { (echo "$BASHPID" >"$CG/cgroup.procs" && exec "$@"); }

mkdir "$CG"
echo "demo: building internal/e2e/demoapp"
GOFLAGS=${GOFLAGS:--mod=mod} go build -o "$DIR/demoapp" ./internal/e2e/demoapp

echo "demo: PostgreSQL 15 on 127.0.0.1:$PG_PORT"
mkdir -p "$DIR/pg" && chown postgres: "$DIR/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/pg/data" -A trust -U postgres --no-sync -E UTF8 --locale=C >"$DIR/initdb.log"
in_cgroup runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -w -l "$DIR/pg/postgres.log" \
	-o "-p $PG_PORT -k $DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
# Made before the collector starts, so these statements are not traced.
psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1)
"${psql[@]}" -c "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
	INSERT INTO items VALUES (1, 'kettle'), (2, 'teapot'), (3, 'mug')"

echo "demo: Jaeger v2 (in memory)"
.bin/jaeger --config testdata/jaeger/config.yaml >"$DIR/jaeger.log" 2>&1 &
PIDS+=($!)

echo "demo: bin/otelcol-ebpf, capturing the cgroup $CG only"
cat >"$DIR/collector.yaml" <<EOF
receivers:
  ebpf:
    filter:
      cgroups: ["$CG"]
    map_pressure:
      enabled: true
      collection_interval: 1s
processors:
  batch:
    timeout: 200ms
exporters:
  otlp_grpc:
    endpoint: 127.0.0.1:$JAEGER_OTLP_GRPC_PORT
    tls:
      insecure: true
  prometheus:
    endpoint: 127.0.0.1:$PROM_PORT
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    traces: {receivers: [ebpf], processors: [batch], exporters: [otlp_grpc]}
    metrics: {receivers: [ebpf], exporters: [prometheus]}
EOF
bin/otelcol-ebpf --config "$DIR/collector.yaml" >"$DIR/collector.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
	grep -q "Everything is ready" "$DIR/collector.log" && break
	kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$DIR/collector.log"; die "the collector exited"; }
	sleep 0.2
done
grep -q "Everything is ready" "$DIR/collector.log" || { cat "$DIR/collector.log"; die "the collector did not start in 60 s"; }

echo "demo: demoapp server on 127.0.0.1:$GRPC_PORT, client calling once a second"
in_cgroup "$DIR/demoapp" -mode server -listen "127.0.0.1:$GRPC_PORT" \
	-dsn "postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable" >"$DIR/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
	grep -q "^listening" "$DIR/server.log" && break
	sleep 0.1
done
grep -q "^listening" "$DIR/server.log" || { cat "$DIR/server.log"; die "the demoapp server did not start"; }
in_cgroup "$DIR/demoapp" -mode client -addr "127.0.0.1:$GRPC_PORT" -calls 0 -interval 1s -ids 5 &
PIDS+=($!)

cat <<EOF

  Jaeger query API  http://127.0.0.1:$JAEGER_QUERY_HTTP_PORT/api/services
                    http://127.0.0.1:$JAEGER_QUERY_HTTP_PORT/api/traces?service=demoapp&limit=20
                    (the Jaeger built here has no UI assets: / shows a placeholder page)
  Prometheus        http://127.0.0.1:$PROM_PORT/metrics   (ebpf_map_*, ebpf_capture_*)
  logs              $DIR

  Ctrl-C stops everything.

EOF
wait "${PIDS[-1]}"
