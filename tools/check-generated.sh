#!/usr/bin/env bash
# Regenerates everything (`make generate`) and fails when a generated file
# differs from git or is new and untracked. Run from the repository root.
#
# In a clean tree (CI) every change counts. In a working tree with edits of
# your own, only files that `make generate` wrote are checked, so unrelated
# uncommitted work does not trip it.
set -euo pipefail

GO=${GO:-go}
cd "$(git rev-parse --show-toplevel)"

clean_before=false
if [[ -z "$(git status --porcelain --untracked-files=all)" ]]; then
	clean_before=true
fi

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
sleep 0.01 # let generated files get an mtime strictly after the stamp

make --no-print-directory generate GO="$GO"

changed=()
untracked=()
while IFS= read -r f; do
	if $clean_before || [[ ! -e "$f" || "$f" -nt "$stamp" ]]; then changed+=("$f"); fi
done < <(git diff --name-only)
while IFS= read -r f; do
	if $clean_before || [[ "$f" -nt "$stamp" ]]; then untracked+=("$f"); fi
done < <(git ls-files --others --exclude-standard)

status=0
if ((${#changed[@]})); then
	echo "generated files differ from git (run 'make generate' and commit):"
	git --no-pager diff --stat -- "${changed[@]}"
	# Bounded without `| head` (SIGPIPE under pipefail).
	diff_out=$(git --no-pager diff -- "${changed[@]}" || true)
	printf '%s\n' "$diff_out" | sed -n '1,200p'
	status=1
fi
if ((${#untracked[@]})); then
	echo "generated files not tracked by git (git add them, or gitignore them if they are build output):"
	printf '  %s\n' "${untracked[@]}"
	status=1
fi
if ((status == 0)); then
	echo "generated files are up to date"
fi
exit "$status"
