# Sourced by test.sh and run_all.sh: sets PY to a Python that can import gas_lib and the study
# tools, creating .venv with pip on a fresh machine. Safe to source repeatedly.
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_needs="import gas_lib, papermill, nbconvert, ipykernel, pytest, skimage, importlinter"
PY=""
for candidate in "${GAS_PYTHON:-}" "$_repo/.venv/bin/python" python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 && (cd "$_repo" && "$candidate" -c "$_needs") >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "bootstrap: creating $_repo/.venv (first run: installs PyTorch and the study tools, a few minutes)" >&2
  python3 -m venv "$_repo/.venv"
  "$_repo/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$_repo/.venv/bin/python" -m pip install --quiet -e "$_repo[study,test]"
  PY="$_repo/.venv/bin/python"
fi
if ! "$PY" -m jupyter kernelspec list 2>/dev/null | grep -q "^ *python3 "; then
  "$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
fi
export PY
