#!/usr/bin/env bash
# The GPU check, for the day a GPU is lent: on one GPU, in under 8 minutes,
#   1. the machine (GPU, driver, torch, CUDA);
#   2. the training throughput table for resnet18: the official code's fp32 NCHW step (reference)
#      against ours in bf16 + channels_last, every method, batch 128, with the real-pipeline rate
#      (one epoch of `bench run`'s fine-tuning on 5,000 CIFAR-10 JPEG images) and real/synthetic;
#   3. natural pre-training images/s (2 epochs on the 50,000 training images);
#   4. a one-epoch `bench run --methods ours,vaft --arch resnet18` on CIFAR-10 (JPEG), 5,000
#      training images, clean/PGD/CW/AutoAttack on 500 test points, with its timings;
#   5. the same fine-tuning with `--capture on` (CUDA graphs), its timings against 4.;
#   6. the same run under `torchrun --nproc_per_node=1`;
#   7. from the measured rates (benchmarks/grid_estimate.py): the H200-hours of the `paper` preset's
#      grid (every method × 3 seeds) and the minutes of one Table-1 pair (benchmarks/table1_pair.sh);
# and writes everything to benchmarks/RESULTS-gpu.md (or --output FILE).
#
#   benchmarks/gpu_check.sh [--dry-run] [--output FILE] [--data DIR]
#
# --dry-run runs the same steps tiny on the CPU (smallcnn on digits, batch 4, two methods, 64
# training images, 20 test points; step 5 is skipped, capture needs CUDA), so that CI keeps the
# script working on machines without a GPU (tests/test_gpu_check.py).
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
    attacks=clean,pgd,cw,aa-fast device_name=CPU
else
    device=cuda arch=resnet18 batch=128 methods=all rounds=3 subset=5000 n_eval=500 pretrain_epochs=2
    attacks=clean,pgd,cw,aa device_name=$(python -c "import torch; print(torch.cuda.get_device_name().split()[-1])" \
                                          2>/dev/null || echo GPU)
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
        --device "$device" --precision bf16 --channels-last on --eval-archs "" --real-data "$dataset" \
        --real-images "$subset" --json "$work/rates.json" | sed -e 's/^# /### /' -e 's/^## /### /'
    echo
    echo "($(seconds_since "$step") s)"
} >> "$report"

step=$(date +%s)
echo "gpu_check: natural $arch on $dataset ($pretrain_epochs epochs, only a starting point for the timing)" >&2
pretrained=$(bench pretrain --dataset "$dataset" --arch "$arch" --epochs "$pretrain_epochs" --device "$device" --quiet)
natural=$(echo "$pretrained" | sed -n 's/^saved: //p')
natural_rate=$(echo "$pretrained" | sed -n 's/.*, \([0-9.]*\) images\/s)$/\1/p')
pretrain_seconds=$(seconds_since "$step")
{
    echo
    echo "## Natural pre-training"
    echo
    echo "\`bench pretrain --dataset $dataset --arch $arch --epochs $pretrain_epochs\`: $(echo "$pretrained" | head -1)"
    echo "($pretrain_seconds s with start-up and the test-set accuracy)"
} >> "$report"
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

launchers=(single capture torchrun)
[ "$dry_run" = 1 ] && launchers=(single torchrun)  # capture needs CUDA: `--capture on` is refused on a CPU
for launcher in "${launchers[@]}"; do
    step=$(date +%s)
    case "$launcher" in
        single)
            echo "gpu_check: one-epoch bench run" >&2
            title="One-epoch \`bench run\`, one process"
            command=(bench "${run_args[@]}" --capture off) ;;
        capture)
            echo "gpu_check: the same fine-tuning with --capture on" >&2
            title="The same fine-tuning with \`--capture on\` (CUDA graphs; clean and PGD only)"
            command=(bench "${run_args[@]}" --capture on --attacks clean,pgd) ;;
        torchrun)
            echo "gpu_check: the same under torchrun --nproc_per_node=1" >&2
            title="The same under \`torchrun --standalone --nproc_per_node=1\` (clean and PGD only)"
            command=(torchrun --standalone --nproc_per_node=1 -m robustbench_aft.cli "${run_args[@]}"
                     --attacks clean,pgd) ;;
    esac
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

if [ "$dry_run" = 0 ]; then
    python - "$work/single/results.db" "$work/capture/results.db" >> "$report" <<'EOF'
import sqlite3, sys
speed = [dict(sqlite3.connect(db).execute("SELECT method, images_per_second FROM runs WHERE method != 'natural'"))
         for db in sys.argv[1:]]
print("\n| method | eager img/s | captured img/s | captured/eager |\n|---|---|---|---|")
for method, eager in sorted(speed[0].items()):
    captured = speed[1].get(method)
    print(f"| {method} | {eager:.0f} | {captured:.0f} | {captured / eager:.2f} |" if captured
          else f"| {method} | {eager:.0f} | - | - |")
EOF
fi

{
    echo
    echo "## Estimates from the measured rates"
    echo
    python benchmarks/grid_estimate.py --natural-rate "$natural_rate" --rates "$work/rates.json" \
        --db "$work/single/results.db" --device-name "$device_name" | sed -e 's/^/- /'
    echo
    echo "(fine-tuning at the real-pipeline rates of the throughput table, eager; natural pre-training at the rate"
    echo "above; evaluation at the seconds per point of the one-epoch run, whose models are less robust than 20-epoch"
    echo "ones, so that AutoAttack's share is a lower bound: see benchmarks/grid_estimate.py)"
} >> "$report"

echo >> "$report"
echo "Total: $(seconds_since "$started") s." >> "$report"
mkdir -p "$(dirname "$output")"
cp "$report" "$output"
rm -rf "$work"
echo "gpu_check: wrote $output in $(seconds_since "$started") s" >&2
