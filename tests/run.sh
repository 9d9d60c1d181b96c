#!/usr/bin/env bash
# The project's test command (the README's, and CI's through .ci/run):
# lint and type-check the package, build the docs, then run the suite against
# the newest openai 1.x, 2.x and 3.x, each in its own virtualenv under
# .venv-test/ (the newest with line and branch coverage, and its floor).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENVS=${CMDRDATA_TEST_VENVS:-.venv-test}
SDK_RANGES=${CMDRDATA_TEST_OPENAI:-">=1,<2 >=2,<3 >=3,<4"}

# System packages some tests drive for real: headless Chromium renders the HTML
# report, redis-server holds the fleet-wide limit counters, PostgreSQL's server is
# the fleet ledger. Installed from Debian's packages when missing (as root);
# elsewhere those tests skip and say why, except under CI
# (CMDRDATA_REQUIRE_SYSTEM_TOOLS=1), where a missing tool fails them.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
# PostgreSQL's server (initdb, postgres) lives outside PATH, in /usr/lib/postgresql/*/bin
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || missing="$missing postgresql"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== apt-get install$missing"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ "${CI:-}" = "true" ]; then
  export CMDRDATA_REQUIRE_SYSTEM_TOOLS=1
fi

if ! command -v uv >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check uv
fi
UV=$(command -v uv || echo "$PYTHON -m uv")

status=0
first=""
for range in $SDK_RANGES; do
  major=$(echo "$range" | sed -E 's/^>=([0-9]+).*/\1/')
  venv="$VENVS/openai$major"
  [ -x "$venv/bin/python" ] || $UV venv --quiet --python "$PYTHON" "$venv"
  $UV pip install --quiet --python "$venv/bin/python" -e ".[dev,otlp]" "openai$range"
  [ -n "$first" ] || first="$venv"
done

echo "== ruff, mypy --strict"
lint=$(for d in cmdrdata_autotrack tests benchmarks examples; do [ -d "$d" ] && echo "$d"; done)
"$first/bin/ruff" check $lint
"$first/bin/ruff" format --check $lint
"$first/bin/mypy" --strict cmdrdata_autotrack

if [ -f mkdocs.yml ]; then
  echo "== mkdocs build --strict"
  "$first/bin/mkdocs" build --strict --quiet --site-dir "$(mktemp -d)"
fi

# The coverage floor only rises (see CHANGELOG); subprocesses are measured too.
COVERAGE_FLOOR=90
last=$(echo $SDK_RANGES | awk '{print $NF}')

for range in $SDK_RANGES; do
  major=$(echo "$range" | sed -E 's/^>=([0-9]+).*/\1/')
  venv="$VENVS/openai$major"
  version=$("$venv/bin/python" -c "import openai; print(openai.__version__)")
  echo "== tests with openai $version"
  if [ "$range" = "$last" ]; then
    rm -f .coverage .coverage.*
    "$venv/bin/python" -m pytest -q tests --cov --cov-report=term \
      --cov-fail-under="$COVERAGE_FLOOR" || status=$?
  else
    "$venv/bin/python" -m pytest -q tests || status=$?
  fi
done
exit $status
