#!/usr/bin/env bash
# The project's test command (the README's, and CI's through .ci/run):
# lint and type-check the package, build the docs, then run the suite against
# the newest openai 1.x, 2.x and 3.x, each in its own virtualenv under
# .venv-test/: under 1.x and 2.x the tests that drive the SDK, side by side;
# under 3.x all of them, with line and branch coverage and its floor.
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

# Which test runs under which SDK (see "tests that need not run under every SDK major" in
# tests/conftest.py):
# - every test runs under the newest openai 1.x, 2.x and 3.x, unless it is marked otherwise: a
#   new test is run under all three;
# - a test marked sdk_independent (by its module's `pytestmark`, or by itself) never drives the
#   SDK, in this process or in an app it starts (delivery, spool, journal, settings, reconcile
#   against the fake admin API, the ledgers on SQLite and PostgreSQL, the HTML report, the
#   ingest server, the SSE reference parser...). It proves the same under each SDK, so it runs
#   once: the older SDKs' runs skip it (--skip-sdk-independent), the newest's runs the whole
#   suite, with coverage, as before. `@pytest.mark.drives_sdk` takes one test of such a module
#   back into every run, and conftest fails an sdk_independent test that uses an SDK client
#   fixture, meters a call or sends the fake OpenAI API an SDK request.
# The older SDKs' runs go side by side: they wait on subprocesses and servers more than they
# compute, so on 2 CPUs both take about 1.5 times one. They share nothing: each has its own
# temp folder (--basetemp) and state folder (conftest), every server takes a free port.
# CMDRDATA_TEST_PARALLEL=0 runs them one after the other.
PARALLEL=${CMDRDATA_TEST_PARALLEL:-1}
# The coverage floor only rises (see CHANGELOG); subprocesses are measured too.
COVERAGE_FLOOR=90
last=$(echo $SDK_RANGES | awk '{print $NF}')
work=$(mktemp -d)  # the older SDKs' temp folders and logs
trap 'rm -rf "$work"' EXIT

venv_of() { echo "$VENVS/openai$(echo "$1" | sed -E 's/^>=([0-9]+).*/\1/')"; }
version_in() { "$1/bin/python" -c "import openai; print(openai.__version__)"; }

# The tests that drive the SDK, under an older SDK ($1: its range). With $2 = exec, pytest
# replaces the shell: a background job's shell ignores Ctrl-C and would pass that on to pytest.
sdk_tests() {
  local venv run=${2:-}
  venv=$(venv_of "$1")
  echo "== tests with openai $(version_in "$venv") (those that drive the SDK)"
  $run "$venv/bin/python" -m pytest -q tests --skip-sdk-independent \
    --basetemp "$work/$(basename "$venv")"
}

pids=""
for range in $SDK_RANGES; do
  [ "$range" != "$last" ] || continue
  if [ "$PARALLEL" = 1 ]; then
    # (Ctrl-C restored: an interrupted pytest cleans up as usual)
    (trap - INT; sdk_tests "$range" exec) >"$work/$(basename "$(venv_of "$range")").log" 2>&1 &
    pids="$pids $!"
  else
    sdk_tests "$range" || status=$?
  fi
done
if [ -n "$pids" ]; then
  echo "== tests under the older SDKs, side by side (their output follows when they end)"
  for pid in $pids; do
    wait "$pid" || status=$?
  done
  for range in $SDK_RANGES; do
    [ "$range" = "$last" ] || cat "$work/$(basename "$(venv_of "$range")").log"
  done
fi

# The whole suite under the newest SDK, with coverage.
venv=$(venv_of "$last")
echo "== tests with openai $(version_in "$venv") (all of them, with coverage)"
rm -f .coverage .coverage.*
"$venv/bin/python" -m pytest -q tests --cov --cov-report=term \
  --cov-fail-under="$COVERAGE_FLOOR" || status=$?
exit $status
