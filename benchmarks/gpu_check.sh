#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent: on one GPU, in under 8 minutes,
#   1. the machine (GPU, driver, torch, CUDA);
#   2. the training throughput table for resnet18: the official code's fp32 NCHW step (reference)
#      against ours in bf16 + channels_last, every method, batch 128;
#   3. a one-epoch `bench run --methods ours,vaft --arch resnet18` on CIFAR-10 (JPEG), 5,000
#      training images, 500 test points, with its timings;
#   4. the same run under `torchrun --nproc_per_node=1`;
# and writes everything to benchmarks/RESULTS-gpu.md (or --output FILE).
#
#   benchmarks/gpu_check.sh [--dry-run] [--output FILE] [--data DIR]
#
# --dry-run runs the same four steps tiny on the CPU (smallcnn on digits, batch 4, two methods, 64
# training images, 20 test points), so that CI keeps the script working on machines without a GPU
# (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
output=benchmarks/RESULTS-gpu.md
data=../shared/data/cifar10-jpeg
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --output) output="$2"; shift ;;
        --data) data="$2"; shift ;;
        *) echo "gpu_check.sh: error: unknown option $1 (use --dry-run, --output FILE, --data DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$dry_run" = 1 ]; then
    device=cpu arch=smallcnn batch=4 methods=vaft,afd rounds=1 subset=64 n_eval=20 pretrain_epochs=1
    attacks=clean,pgd
else
    device=cuda arch=resnet18 batch=128 methods=all rounds=3 subset=5000 n_eval=500 pretrain_epochs=2
    attacks=clean,pgd,cw,aa-fast
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: error: no CUDA device is visible to torch; use --dry-run to check the script on a CPU" >&2
        exit 2
    fi
fi
if [ "$dry_run" = 1 ]; then
    dataset=digits
elif [ -d "$data/train" ]; then
    dataset="folder:$data"
else
    echo "gpu_check.sh: error: no CIFAR-10 (JPEG) copy at $data/train; pass --data DIR" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
export ROBUSTBENCH_AFT_CACHE="$work/cache" PYTHONUNBUFFERED=1
report="$work/report.md"
started=$(date +%s)

seconds_since() { echo $(( $(date +%s) - $1 )); }

{
    echo "# GPU check"
    echo
    echo "Command: \`benchmarks/gpu_check.sh$([ "$dry_run" = 1 ] && echo " --dry-run")\`, package commit" \
         "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d)."
    [ "$dry_run" = 1 ] && echo && echo "**Dry run**: the steps of the GPU check, tiny and on the CPU; no number here is a GPU number."
    echo
    echo "## Machine"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    python -c "import platform, os, torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
platform.processor() or platform.machine(), os.cpu_count(), 'CPUs')"
    echo '```'
} > "$report"

step=$(date +%s)
echo "gpu_check: throughput table ($arch, batch $batch)" >&2
{
    echo
    echo "## Training throughput: reference fp32 NCHW against ours in bf16 + channels_last"
    echo
    python benchmarks/throughput.py --archs "$arch" --methods "$methods" --batch "$batch" --rounds "$rounds" \
        --device "$device" --precision bf16 --channels-last on --eval-archs "" | sed -e 's/^# /### /' -e 's/^## /### /'
    echo
    echo "($(seconds_since "$step") s)"
} >> "$report"

step=$(date +%s)
echo "gpu_check: natural $arch on $dataset ($pretrain_epochs epochs, only a starting point for the timing)" >&2
natural=$(bench pretrain --dataset "$dataset" --arch "$arch" --epochs "$pretrain_epochs" --device "$device" --quiet \
          | sed -n 's/^saved: //p')
pretrain_seconds=$(seconds_since "$step")
run_args=(run --methods ours,vaft --arch "$arch" --dataset "$dataset" --pretrained "$natural" --epochs 1
          --train-subset "$subset" --n-eval "$n_eval" --attacks "$attacks" --device "$device" --quiet)

timings() {
    python - "$1" <<'EOF'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT method, train_seconds, images_per_second, wall_seconds FROM runs ORDER BY created_at").fetchall()
print("| model | fine-tuning s | images/s | cell wall s |\n|---|---|---|---|")
for method, train, speed, wall in rows:
    print(f"| {method} | {'-' if train is None else f'{train:.1f}'} | {'-' if speed is None else f'{speed:.0f}'} | {wall:.1f} |")
EOF
}

for launcher in single torchrun; do
    step=$(date +%s)
    if [ "$launcher" = single ]; then
        echo "gpu_check: one-epoch bench run" >&2
        title="One-epoch \`bench run\`, one process"
        command=(bench "${run_args[@]}")
    else
        echo "gpu_check: the same under torchrun --nproc_per_node=1" >&2
        title="The same under \`torchrun --standalone --nproc_per_node=1\`"
        command=(torchrun --standalone --nproc_per_node=1 -m robustbench_aft.cli "${run_args[@]}")
    fi
    command+=(--db "$work/$launcher/results.db" --out "$work/$launcher/out")
    printed=$("${command[@]}")
    {
        echo
        echo "## $title"
        echo
        echo "\`${command[*]}\` (the natural model: $pretrain_epochs epochs of pre-training, $pretrain_seconds s)"
        echo
        echo "$printed"
        echo
        timings "$work/$launcher/results.db"
        echo
        echo "($(seconds_since "$step") s)"
    } >> "$report"
done

echo >> "$report"
echo "Total: $(seconds_since "$started") s." >> "$report"
mkdir -p "$(dirname "$output")"
cp "$report" "$output"
rm -rf "$work"
echo "gpu_check: wrote $output in $(seconds_since "$started") s" >&2
