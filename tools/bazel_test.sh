#!/usr/bin/env bash
# Runs every Bazel test of the project (`bazel test //...`) with the project's virtual environment,
# then prints one closing line adding up every test file's pytest report (tools/test_summary.py).
#
#   tools/bazel_test.sh /absolute/path/to/.venv/bin/python [more `bazel test` flags...]
#   BAZEL_TARGETS="//:test_flops //:test_infra" tools/bazel_test.sh ...   (some targets only)
#
# `make bazel-test` (part of `make test`) calls it. If `bazel` is missing it installs Debian's
# Bazel 4.2 (needs root or sudo). Without internet, Bazel's few downloads are replaced by the local
# repositories of ../shared/bazel/bazel-offline (next to the checkout; BAZEL_OFFLINE=path overrides,
# BAZEL_OFFLINE= (empty) uses plain `bazel`). Static flags live in .bazelrc; Bazel's output stays in
# its default place outside the checkout (~/.cache/bazel), reached through the gitignored bazel-*
# symlinks.
set -euo pipefail

python=${1:?usage: tools/bazel_test.sh /absolute/path/to/python [bazel test flags...]}
shift
case "$python" in
  /*) ;;
  *) echo "tools/bazel_test.sh: the Python path must be absolute, got: $python" >&2; exit 2 ;;
esac
if [[ ! -x "$python" ]]; then
  echo "tools/bazel_test.sh: no Python interpreter at $python (run \`make .venv/.test\`?)" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if ! command -v bazel >/dev/null 2>&1; then
  echo "tools/bazel_test.sh: bazel not found, installing Debian's bazel-bootstrap" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y bazel-bootstrap bazel-rules-java bazel-platforms
fi

offline=${BAZEL_OFFLINE-$root/../shared/bazel/bazel-offline}
if [[ -n "$offline" && -f "$offline" ]]; then
  bazel=(bash "$offline")  # `bash`: a copied folder may have lost the executable bit.
else
  bazel=(bazel)
fi

# Bazel 4's Python launcher starts with `#!/usr/bin/env python` and then runs --python_path: the
# venv's bin directory goes first on the tests' PATH, so `python` exists (CI machines may have only
# python3) and is the venv's, also for tests that start `python` subprocesses.
venv_bin=$(dirname "$python")

# Bazel can't see the venv: its package list goes into the tests' environment, so cached test
# results are reused only while the installed packages are the same.
venv_hash=$("$python" -m pip freeze --all --exclude-editable | sha256sum | cut -c1-16)

# .bazelrc has the other flags; the ones that matter most are repeated here.
status=0
"${bazel[@]}" test ${BAZEL_TARGETS:-//...} \
  --incompatible_use_python_toolchains=false \
  --python_path="$python" \
  --test_env=PATH="$venv_bin:/usr/local/bin:/usr/bin:/bin" \
  --test_env=PYTHON_PACKAGES_SHA256="$venv_hash" \
  --test_output=errors \
  --local_test_jobs=2 \
  "$@" || status=$?

# One closing line over every test file: "bazel: N passed, N failed, N skipped".
"$python" tools/test_summary.py "$("${bazel[@]}" info bazel-testlogs 2>/dev/null || echo bazel-testlogs)"
exit "$status"
