#!/usr/bin/env bash
# Installs every Debian 12 package kvtune needs. Idempotent: when all of them
# are present it returns at once without touching apt.
#
#   bash scripts/install-deps.sh                  # what kvtune builds and runs with
#   bash scripts/install-deps.sh --optional slurm browser
#
# Optional groups are for tests that start third-party programs: `slurm`
# (slurm-wlm, munge and jq, for the real Slurm test) and `browser` (Debian's
# chromium, for the web page test). A group that cannot be installed is a
# warning, not an error: its tests skip and say so.
set -euo pipefail

PACKAGES=(
  cmake g++ make pkg-config
  libzmq3-dev cppzmq-dev
  capnproto libcapnp-dev
  librocksdb-dev
  libboost-dev libboost-program-options-dev
  libtorch-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libxxhash-dev libyaml-cpp-dev libxml2-dev
  libopenblas0-pthread
)

optional_packages() {
  case "$1" in
    slurm) echo "slurm-wlm munge jq" ;;
    browser) echo "chromium" ;;
    *)
      echo "install-deps: unknown optional group '$1' (groups: slurm, browser)" >&2
      exit 2
      ;;
  esac
}

groups=()
while [ $# -gt 0 ]; do
  case "$1" in
    --optional)
      shift
      if [ $# -eq 0 ] || [ "${1#--}" != "$1" ]; then
        echo "install-deps: --optional needs a group (groups: slurm, browser)" >&2
        exit 2
      fi
      while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do
        optional_packages "$1" > /dev/null
        groups+=("$1")
        shift
      done
      ;;
    *)
      echo "install-deps: unknown argument '$1' (usage: install-deps.sh [--optional GROUP...])" >&2
      exit 2
      ;;
  esac
done

missing_of() {
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed"; then
      echo "$p"
    fi
  done
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
updated=0
apt_install() {
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq || return 1
    updated=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

mapfile -t missing < <(missing_of "${PACKAGES[@]}")
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

for g in "${groups[@]}"; do
  # shellcheck disable=SC2046  # the group's package names, split on purpose
  mapfile -t missing < <(missing_of $(optional_packages "$g"))
  if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: optional group $g present"
  elif apt_install "${missing[@]}"; then
    echo "install-deps: optional group $g installed (${missing[*]})"
  else
    echo "install-deps: WARNING: optional group $g (${missing[*]}) could not be installed;" \
      "its tests will skip" >&2
  fi
done
