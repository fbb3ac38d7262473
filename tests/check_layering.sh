#!/usr/bin/env bash
# The layering rules of README "How it fits together", checked on the sources:
# worker/ and coordinator/ never include each other's headers or link each
# other's targets, and no product source file is over 600 lines.
set -uo pipefail
root="${1:?usage: check_layering.sh SOURCE_DIR}"
cd "$root" || exit 2
fail=0

# Headers of one wing, as they would be included ("name.h" or "dir/name.h").
headers_of() { (cd "$1" && find . -name '*.h' -o -name '*.cuh' | sed 's|^\./||'); }
# Library/executable targets a CMakeLists.txt defines.
targets_of() { grep -ohE 'add_(library|executable)\(\s*[A-Za-z0-9_-]+' "$1"/CMakeLists.txt | sed -E 's/.*\(\s*//'; }

check_wing() {  # check_wing FROM OTHER
  local from=$1 other=$2 h t
  while read -r h; do
    [ -z "$h" ] && continue
    # Files of `from` that include `other`'s header, unless `from` has a
    # header of the same path (then the include means its own).
    if [ -e "$from/$h" ] || [ -e "$from/cli/$h" ]; then continue; fi
    if grep -rnE "#include\s+\"([./]*$other/)?$h\"" "$from" --include='*.cpp' --include='*.h' --include='*.cu'; then
      echo "layering: a file under $from/ includes $other/$h"
      fail=1
    fi
  done < <(headers_of "$other")
  while read -r t; do
    [ -z "$t" ] && continue
    if sed 's/#.*//' "$from/CMakeLists.txt" | grep -nE "(^|[^A-Za-z0-9_-])$t([^A-Za-z0-9_-]|\$)"; then
      echo "layering: $from/CMakeLists.txt uses $other's target $t"
      fail=1
    fi
  done < <(targets_of "$other")
}
check_wing worker coordinator
check_wing coordinator worker

# The ground floor includes neither wing.
for floor in common kernels schemas; do
  if grep -rnE '#include\s+"[^"]*(coordinator|worker)/' "$floor"; then
    echo "layering: $floor/ includes a wing"
    fail=1
  fi
done

# No product source file over 600 lines.
while read -r f; do
  n=$(wc -l < "$f")
  if [ "$n" -gt 600 ]; then
    echo "layering: $f has $n lines (over 600)"
    fail=1
  fi
done < <(find common kernels schemas worker coordinator \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \))

[ "$fail" -eq 0 ] && echo "layering: ok"
exit "$fail"
