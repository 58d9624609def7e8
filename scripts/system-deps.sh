#!/usr/bin/env bash
# The system packages the end-to-end test tiers need, from Debian's archive:
#   postgresql  the scale-out tier (Prefect server, MLflow and Optuna on PostgreSQL)
#   chromium    the UI tier (the Prefect UI and Evidently's report in a headless browser)
# Installs what is missing when it can (root, or passwordless sudo); otherwise says what is
# missing and how to install it. Tests of a tier whose package is missing skip with that reason,
# except under CI (CI=true), where they fail.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null || missing+=(postgresql)
command -v chromium > /dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
  sudo=(sudo -n)
else
  echo "system-deps: missing ${missing[*]}; install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  # CI as tests/ci.py reads it: "true" in any case, or 1.
  ci="${CI:-}"
  [[ "${ci,,}" == "true" || "$ci" == "1" ]] && exit 1
  exit 0
fi
echo "system-deps: installing ${missing[*]} from Debian's archive"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" > /dev/null
