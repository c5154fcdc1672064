#!/usr/bin/env bash
# Run the whole study headlessly: every notebook for every category with papermill, each
# executed copy turned into self-contained HTML, then the cross-category summary page.
set -uo pipefail
cd "$(dirname "$0")"
REPO="$(pwd)"

usage() {
  cat <<'EOF'
Usage: ./run_all.sh [options]

Runs notebooks/00..03 for each category with papermill into reports/<category>/<notebook>.ipynb,
converts each to HTML next to it, and builds reports/index.html and reports/summary.csv.
Creates .venv on a fresh machine (as ./test.sh does).

Options (environment variable in brackets):
  --categories "A B ..."  categories, space- or comma-separated         [GAS_CATEGORIES]
                          default: bracket_white bracket_brown bracket_black metal_plate
  --data-root DIR         folder holding <category>/train/good           [GAS_DATA_ROOT]
                          default: data/anomaly_dataset
  --profile P             cpu | seed | glass | auto                      [GAS_PROFILE] default: auto
  --epochs N              override the profile's number of epochs        [GAS_EPOCHS]
  --image-size N          override the profile's image size (quick runs) [GAS_IMAGE_SIZE]
  --ablation-grid G       tiny | small | full (default: by profile)      [GAS_ABLATION_GRID]
  --seed N                random seed (default 0)                        [GAS_SEED]
  --out DIR               reports folder (default: reports)              [GAS_REPORTS]
  --jobs N                categories run in parallel (default 1); with several
                          GPUs visible, each job gets its own GPU          [GAS_JOBS]
  --force                 rerun notebooks that already finished          [GAS_FORCE=1]
  --download              fetch MPDD (about 2 GB) without asking when the data root lacks it
  -h, --help              this text

Re-running skips every notebook that already finished with the same settings. A failing
category does not stop the others; its summary row says where it failed and links its log
(reports/<category>/run.log) and partial report. The exit status is 1 if any category failed.
EOF
}

CATEGORIES="${GAS_CATEGORIES:-bracket_white bracket_brown bracket_black metal_plate}"
DATA_ROOT="${GAS_DATA_ROOT:-data/anomaly_dataset}"
PROFILE="${GAS_PROFILE:-auto}"
EPOCHS="${GAS_EPOCHS:-}"
IMAGE_SIZE="${GAS_IMAGE_SIZE:-}"
ABLATION_GRID="${GAS_ABLATION_GRID:-}"
SEED="${GAS_SEED:-0}"
OUT="${GAS_REPORTS:-reports}"
JOBS="${GAS_JOBS:-1}"
FORCE="${GAS_FORCE:-0}"
DOWNLOAD=0
NOTEBOOKS=(00_data_exploration 01_training 02_gas_ablation 03_evaluation)

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --categories) need_value "$@"; CATEGORIES="$2"; shift 2 ;;
    --data-root) need_value "$@"; DATA_ROOT="$2"; shift 2 ;;
    --profile) need_value "$@"; PROFILE="$2"; shift 2 ;;
    --epochs) need_value "$@"; EPOCHS="$2"; shift 2 ;;
    --image-size) need_value "$@"; IMAGE_SIZE="$2"; shift 2 ;;
    --ablation-grid) need_value "$@"; ABLATION_GRID="$2"; shift 2 ;;
    --seed) need_value "$@"; SEED="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --jobs) need_value "$@"; JOBS="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --download) DOWNLOAD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
CATEGORIES="${CATEGORIES//,/ }"
read -r -a CATEGORY_LIST <<<"$CATEGORIES"
[ ${#CATEGORY_LIST[@]} -gt 0 ] || { echo "run_all.sh: no categories given" >&2; exit 2; }
case "$PROFILE" in cpu|seed|glass|auto) ;; *) echo "run_all.sh: --profile '$PROFILE': expected cpu, seed, glass or auto" >&2; exit 2 ;; esac
for number in "$JOBS" "$SEED" ${EPOCHS:+"$EPOCHS"} ${IMAGE_SIZE:+"$IMAGE_SIZE"}; do
  [[ "$number" =~ ^[0-9]+$ ]] || { echo "run_all.sh: '$number' is not a whole number" >&2; exit 2; }
done
[ "$JOBS" -ge 1 ] || JOBS=1

source scripts/bootstrap.sh
export MPLBACKEND=Agg PYTHONWARNINGS="ignore::DeprecationWarning"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DATA_ABS="$(mkdir -p "$DATA_ROOT" 2>/dev/null; cd "$DATA_ROOT" 2>/dev/null && pwd || echo "$DATA_ROOT")"

# --- the dataset: offer the download when none of the categories is there ----------------
have_any=0
for category in "${CATEGORY_LIST[@]}"; do
  [ -d "$DATA_ABS/$category/train/good" ] && have_any=1
done
if [ "$have_any" = 0 ]; then
  echo "No category of ${CATEGORY_LIST[*]} found under $DATA_ABS."
  answer=n
  if [ "$DOWNLOAD" = 1 ]; then
    answer=y
  elif [ -t 0 ]; then
    read -r -p "Download MPDD (about 2 GB, CC BY-NC-SA 4.0) into $DATA_ABS now? [y/N] " answer
  fi
  if [[ "$answer" =~ ^[Yy] ]]; then
    "$PY" -m gas_lib.tools.download --dest "$DATA_ABS" || exit 2
  else
    "$PY" - "$DATA_ABS" "${CATEGORY_LIST[0]}" <<'PYEOF' >&2
import sys
from gas_lib.tools.download import LAYOUT, MPDD_URL
root, category = sys.argv[1], sys.argv[2]
print(f"run_all.sh: no data. Get MPDD from {MPDD_URL} (or rerun with --download) and unpack it "
      f"so that {root}/{category}/train/good exists (layout: {LAYOUT.replace('<dest>', root)}); "
      "see data/README.md.")
PYEOF
    exit 2
  fi
fi

# --- one category -------------------------------------------------------------------------
# The profile's resolved settings and the method's version, hashed: a finished notebook made
# with other preset values or older method code is rerun, not reused.
METHOD_STAMP="$("$PY" -c 'import sys; from gas_lib.config import fingerprint; print(fingerprint(sys.argv[1]))' "$PROFILE" 2>/dev/null || echo unknown)"
settings_of() {  # what a finished notebook depends on; a change reruns it
  echo "profile=$PROFILE($METHOD_STAMP) epochs=$EPOCHS image_size=$IMAGE_SIZE grid=$ABLATION_GRID seed=$SEED data=$DATA_ABS"
}

failure_reason() {  # the error a failed notebook raised, else the log's last line
  "$PY" - "$1" 2>/dev/null <<'PYEOF' || tail -n 1 "$2"
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
if not errors:
    sys.exit(1)
print(f"{errors[-1]['ename']}: {errors[-1]['evalue']}"[:500])
PYEOF
}

run_category() {
  local category="$1" gpu="${2:-}"
  local dir="$OUT/$category" log="$OUT/$category/run.log" settings rerun=0
  settings="$(settings_of)"
  if [ "$FORCE" = 1 ]; then rm -rf "$dir"; fi
  mkdir -p "$dir"
  rm -f "$dir/FAILED"
  [ -n "$gpu" ] && export CUDA_VISIBLE_DEVICES="$gpu"
  echo "=== $category: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $settings" >>"$log"
  for notebook in "${NOTEBOOKS[@]}"; do
    local done_file="$dir/.done_$notebook"
    if [ "$rerun" = 0 ] && [ -f "$done_file" ] && [ "$(cat "$done_file")" = "$settings" ] \
       && [ -f "$dir/$notebook.html" ]; then
      echo "[$category] $notebook: already done, skipped (--force reruns)" | tee -a "$log"
      continue
    fi
    rerun=1  # every later notebook depends on this one's outputs
    rm -f "$done_file"
    echo "[$category] $notebook ..." | tee -a "$log"
    local params=(-p category "$category" -p data_root "$DATA_ABS" -p profile "$PROFILE"
                  -p out_dir "$dir" -p seed "$SEED" -p interactive False)
    [ -n "$EPOCHS" ] && params+=(-p epochs "$EPOCHS")
    [ -n "$IMAGE_SIZE" ] && params+=(-p image_size "$IMAGE_SIZE")
    [ -n "$ABLATION_GRID" ] && [ "$notebook" = 02_gas_ablation ] && params+=(-p ablation_grid "$ABLATION_GRID")
    local started=$SECONDS ok=1
    "$PY" -m papermill "notebooks/$notebook.ipynb" "$dir/$notebook.ipynb" "${params[@]}" \
        --cwd notebooks --kernel python3 --no-progress-bar >>"$log" 2>&1 || ok=0
    "$PY" -m jupyter nbconvert --to html --log-level WARN "$dir/$notebook.ipynb" \
        --output-dir "$dir" >>"$log" 2>&1 || true
    if [ "$ok" = 1 ]; then
      echo "$settings" >"$done_file"
      echo "[$category] $notebook: done in $((SECONDS - started)) s" | tee -a "$log"
    else
      { echo "$notebook"; failure_reason "$dir/$notebook.ipynb" "$log"; } >"$dir/FAILED"
      echo "[$category] $notebook: FAILED after $((SECONDS - started)) s, see $log" | tee -a "$log"
      return 1
    fi
  done
  return 0
}

# --- all categories, --jobs at a time -------------------------------------------------------
gpus=()
if command -v nvidia-smi >/dev/null 2>&1 && [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi
started_all=$SECONDS
index=0
for category in "${CATEGORY_LIST[@]}"; do
  gpu=""
  if [ "$JOBS" -gt 1 ] && [ ${#gpus[@]} -gt 1 ]; then gpu="${gpus[$((index % ${#gpus[@]}))]}"; fi
  if [ "$JOBS" -gt 1 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    run_category "$category" "$gpu" &
  else
    run_category "$category" "$gpu"
  fi
  index=$((index + 1))
done
wait

"$PY" -m gas_lib.study.summary --reports "$OUT" --categories "${CATEGORY_LIST[@]}" \
    --profile "$PROFILE" --data-root "$DATA_ABS"
failed=0
for category in "${CATEGORY_LIST[@]}"; do
  [ -f "$OUT/$category/FAILED" ] && failed=$((failed + 1))
done
echo "run_all.sh: ${#CATEGORY_LIST[@]} categories in $((SECONDS - started_all)) s, $failed failed; open $OUT/index.html"
[ "$failed" = 0 ]
