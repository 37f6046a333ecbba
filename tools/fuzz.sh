#!/usr/bin/env bash
# Runs every fuzz target of the module, one after the other, each for a
# fixed time, and prints how many inputs each one executed. Run from
# anywhere; `make fuzz` calls it.
#
#   tools/fuzz.sh                      every target, FUZZTIME each
#   tools/fuzz.sh FuzzSanitize         targets whose name or package matches
#   FUZZTIME=10000000x tools/fuzz.sh   a fixed number of executions instead
#
# Environment:
#   FUZZTIME          -fuzztime of each target (default 10s; "Nx" = N executions)
#   FUZZMINIMIZETIME  -fuzzminimizetime: bound on minimising each new input or
#                     crasher (default 10s; go's own default is 60s)
#   FUZZPARALLEL      -parallel: fuzzing workers (default: GOMAXPROCS)
#   FUZZLOGDIR        keep each target's output there (default: a temp dir)
#   GO                the go command (default: go)
#
# A crasher makes go test write the failing input under the package's
# testdata/fuzz/<Target>/ and fail; the script goes on with the other
# targets and exits non-zero at the end, naming the files. Keep a minimised
# crasher there as a seed once the bug is fixed: `go test` replays it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-10s}
FUZZPARALLEL=${FUZZPARALLEL:-}

# package target
TARGETS=(
	"./internal/event FuzzDecode"
	"./internal/stream FuzzAssembler"
	"./internal/postgres FuzzParser"
	"./internal/grpc FuzzParser"
	"./internal/sqlsan FuzzSanitize"
	"./internal/goelf FuzzReturnOffsets"
	"./receiver FuzzConfigValidate"
)

logdir=${FUZZLOGDIR:-}
if [[ -z "$logdir" ]]; then
	logdir=$(mktemp -d)
	trap 'rm -rf "$logdir"' EXIT
fi
mkdir -p "$logdir"

# Every fuzz target of the module must be listed above.
missing=0
while IFS=: read -r file line; do
	entry="./$(dirname "${file#./}") $(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")"
	known=0
	for t in "${TARGETS[@]}"; do if [[ "$t" == "$entry" ]]; then known=1; fi; done
	if ((known == 0)); then
		echo "tools/fuzz.sh: $entry is not in TARGETS" >&2
		missing=1
	fi
done < <(find . -path ./bin -prune -o -path ./tools -prune -o -path ./bench -prune -o -path ./.bin -prune -o \
	-name '*_test.go' -print | xargs grep -H '^func Fuzz' || true)
((missing == 0)) || exit 1

# selected PKG TARGET: does a pattern given on the command line match the
# package or the target?
selected() {
	local pkg=$1 target=$2 pat
	for pat in "${FILTERS[@]}"; do
		[[ "$target" == *"$pat"* || "$pkg" == *"$pat"* ]] && return 0
	done
	return 1
}

FILTERS=("$@")
summary=()
failed=()
start=$SECONDS
for entry in "${TARGETS[@]}"; do
	read -r pkg target <<<"$entry"
	if ((${#FILTERS[@]} > 0)) && ! selected "$pkg" "$target"; then
		continue
	fi
	name="${pkg#./}/${target}"
	log="$logdir/$(echo "$name" | tr '/' '_').log"
	echo "==== fuzz $name (fuzztime $FUZZTIME)"
	args=(test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME")
	[[ -n "$FUZZPARALLEL" ]] && args+=(-parallel "$FUZZPARALLEL")
	t0=$SECONDS
	status=ok
	if ! "$GO" "${args[@]}" "$pkg" 2>&1 | tee "$log"; then
		status=FAIL
		failed+=("$name")
	fi
	# go test prints "fuzz: elapsed: 10s, execs: 123456 (12345/sec), ..."
	# every few seconds and once at the end (not at all when it failed early).
	execs=$(grep -o 'execs: [0-9]*' "$log" | tail -n 1 | awk '{ print $2 }' || true)
	summary+=("$(printf '%-34s %-4s %12s execs  %4ss' "$name" "$status" "${execs:-?}" "$((SECONDS - t0))")")
done

echo
echo "==== fuzz summary (fuzztime $FUZZTIME, $((SECONDS - start))s)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
	echo
	echo "failed: ${failed[*]}"
	echo "new crashers (replayed by go test until removed):"
	git status --porcelain --untracked-files=all -- '*/testdata/fuzz/*' 2>/dev/null || true
	exit 1
fi
