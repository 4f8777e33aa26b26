#!/usr/bin/env bash
# The paper-profile book on one GPU, every chapter from scratch, for the Performance page's GPU
# column and the GPU-against-CPU verdict check.
#
#   bash benchmarks/gpu_book.sh OUTDIR [BUDGET_S] [DEVICE]
#
# (CHAPTERS="stem ..." runs only those, PROFILE=quick the quick profile, LARGE=0 skips the large drift map.)
#
# Runs every chapter of the book at the paper profile with device=DEVICE (default cuda), all
# chapters at once, one process per chapter with 2 CPU threads each, sharing the one GPU (a
# reader with a GPU machine can run the book this way; each chapter's time is then measured
# under that sharing, an upper bound on its time alone). A ninth process runs the drift map at
# a larger scale than its paper profile (10 seeds, the KL sweep's whole prompt range). Each
# process is stopped after BUDGET_S seconds (default 420). Writes OUTDIR/gpu_book.tar.gz: the
# per-chapter profiles (benchmarks.profile --csv), every chapter's results except its model
# caches (claims.csv and the other CSVs), one log per chapter, nvidia-smi's utilisation
# samples, and summary.txt (wall time of the whole book, outcome per chapter).
#
# Needs jupytext (benchmarks.profile reads the notebooks' sources) and IPython (the notebooks
# import IPython.display); where they are missing, wheels in .whl/ are installed to /tmp/site
# (made elsewhere with `pip download --only-binary=:all: --python-version 3.12 -d .whl jupytext ipython`).
set -u
out=${1:?usage: bash benchmarks/gpu_book.sh OUTDIR [BUDGET_S] [DEVICE]}
budget=${2:-420}
device=${3:-cuda}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
mkdir -p "$out" "$work/logs"
cd "$root" || exit 1
export PYTHONUNBUFFERED=1
if ! python3 -c "import jupytext, IPython" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    grep -m1 "model name" /proc/cpuinfo
    nproc
} >"$work/summary.txt" 2>&1
if [ "$device" != cpu ]; then  # the CUDA path against the CPU path on tiny models, before the chapters
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_device.py >"$work/logs/pytest.log" 2>&1
    echo "tests/test_cuda.py, tests/test_device.py: exit $?" >>"$work/summary.txt"
fi
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$work/gpu_utilisation.csv" 2>/dev/null &
monitor=$!

chapters=${CHAPTERS:-$(python3 -c "from benchmarks.common import stems; print(' '.join(stems()))")}
profile=${PROFILE:-paper}
start=$(date +%s.%N)

chapter() {  # NAME ARGS...: one chapter in the background; its exit code and end time go to ends.txt
    local name=$1
    shift
    (
        OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} timeout "$budget" python3 -m benchmarks.profile "$@" --profile "$profile" \
            --device "$device" >"$work/logs/$name.log" 2>&1
        echo "$name $? $(date +%s.%N)" >>"$work/ends.txt"
    ) &
    jobs_started+=($!)
}
jobs_started=()
for stem in $chapters; do
    chapter "$stem" "$stem" --results "$work/results" --csv "profile_gpu_$stem"
done
if [ "${LARGE:-1}" = 1 ]; then
    chapter drift_map_large drift_map --set "seeds=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" --set "prompt_max=600" \
        --results "$work/results_large" --csv profile_gpu_drift_map_large
fi
wait "${jobs_started[@]}"
while read -r name code finished; do
    case $code in
        0) outcome=ran ;;
        124) outcome="stopped at the ${budget} s budget" ;;
        *) outcome="failed (exit $code)" ;;
    esac
    echo "$name: $outcome, $(python3 -c "print(f'{$finished - $start:.1f}')") s after the start" >>"$work/summary.txt"
done <"$work/ends.txt"
echo "whole book: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall" >>"$work/summary.txt"
kill "$monitor" 2>/dev/null
cp _build/benchmarks/profile_gpu_*.csv "$work/" 2>/dev/null
tar -C "$work" --exclude runs -czf "$out/gpu_book.tar.gz" .
cat "$work/summary.txt"
