#!/usr/bin/env bash
# One Table-1 comparison on one GPU loan: a natural ResNet-18 pre-trained on the 50,000 CIFAR-10
# (JPEG) training images, then AFD and vAFT fine-tuned with the `paper` preset (20 epochs, batch 128,
# AFD's schedule, seed 0) and evaluated with clean, PGD-20, CW-20 and AutoAttack standard on a fixed
# seeded subset of 1,000 test points; the leaderboard as `bench run` prints it, every phase's
# seconds, written to benchmarks/RESULTS-table1-pair.md (or --output FILE).
#
#   benchmarks/table1_pair.sh [--dry-run] [--output FILE] [--data DIR] [--natural-epochs N] [--capture auto|on|off]
#
# --natural-epochs: the natural model's epochs (default 30: the 100-epoch recipe would take most of a
# loan; the recipe's lr and cosine schedule are kept). benchmarks/gpu_check.sh prints, from its
# measured rates, how many minutes this script takes (aim: at most 10 on an H200).
# --dry-run runs the same steps tiny on the CPU (smallcnn on digits, one epoch on 64 images, 20 test
# points, aa-fast in place of AutoAttack standard), so that CI keeps the script working without a GPU (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
output=benchmarks/RESULTS-table1-pair.md
data=../shared/data/cifar10-jpeg
natural_epochs=30
capture=auto
usage="use --dry-run, --output FILE, --data DIR, --natural-epochs N, --capture auto|on|off"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --output|--data|--natural-epochs|--capture)
            if [ $# -lt 2 ]; then echo "table1_pair.sh: error: $1 needs a value ($usage)" >&2; exit 2; fi
            case "$1" in
                --output) output="$2" ;;
                --data) data="$2" ;;
                --natural-epochs) natural_epochs="$2" ;;
                --capture) capture="$2" ;;
            esac
            shift ;;
        *) echo "table1_pair.sh: error: unknown option $1 ($usage)" >&2; exit 2 ;;
    esac
    shift
done
case "$natural_epochs" in
    ''|*[!0-9]*|0) echo "table1_pair.sh: error: --natural-epochs must be a positive whole number, got '$natural_epochs'" >&2
                   exit 2 ;;
esac

if [ "$dry_run" = 1 ]; then
    device=cpu arch=smallcnn dataset=digits natural_epochs=1
    # aa-fast for AutoAttack standard: Square's 5,000 queries on the few robust points take minutes on a CPU.
    scale=(--epochs 1 --train-subset 64 --n-eval 20 --val-size 32 --feature-gap-probe 16 --attacks clean,pgd,cw,aa-fast)
else
    device=cuda arch=resnet18 scale=(--n-eval 1000)
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "table1_pair.sh: error: no CUDA device is visible to torch; use --dry-run to check the script on a CPU" >&2
        exit 2
    fi
    if [ ! -d "$data/train" ]; then
        echo "table1_pair.sh: error: no CIFAR-10 (JPEG) copy at $data/train; pass --data DIR" >&2
        exit 2
    fi
    dataset="folder:$data"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/table1-pair.XXXXXX")
export ROBUSTBENCH_AFT_CACHE="$work/cache" PYTHONUNBUFFERED=1
started=$(date +%s)
seconds_since() { echo $(( $(date +%s) - $1 )); }

step=$(date +%s)
echo "table1_pair: natural $arch on $dataset, $natural_epochs epochs" >&2
pretrained=$(bench pretrain --dataset "$dataset" --arch "$arch" --epochs "$natural_epochs" --device "$device" --quiet)
natural=$(echo "$pretrained" | sed -n 's/^saved: //p')
pretrain_seconds=$(seconds_since "$step")

step=$(date +%s)
echo "table1_pair: AFD and vAFT with the paper preset" >&2
command=(bench run --methods ours,vaft --preset paper --arch "$arch" --dataset "$dataset" --pretrained "$natural"
         --seeds 0 "${scale[@]}" --capture "$capture" --device "$device" --quiet
         --db "$work/results.db" --out "$work/out")
printed=$("${command[@]}")
run_seconds=$(seconds_since "$step")

{
    echo "# A Table-1 pair: AFD and vAFT"
    echo
    echo "Command: \`benchmarks/table1_pair.sh$([ "$dry_run" = 1 ] && echo " --dry-run")\`, package commit" \
         "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d)."
    [ "$dry_run" = 1 ] && echo && echo "**Dry run**: the steps, tiny and on the CPU; no number here is a result."
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    python -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda)"
    echo '```'
    echo
    echo "## Natural model"
    echo
    echo "\`bench pretrain --dataset $dataset --arch $arch --epochs $natural_epochs\`: $(echo "$pretrained" | head -1)"
    echo "($pretrain_seconds s)"
    echo
    echo "## Fine-tuning and evaluation"
    echo
    echo "\`${command[*]}\` ($run_seconds s)"
    echo
    echo "$printed"
    echo
    python - "$work/results.db" <<'EOF'
import json, sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
runs = connection.execute("SELECT run_id, method, train_seconds, images_per_second, wall_seconds FROM runs "
                          "ORDER BY created_at").fetchall()
costs = {}
for run_id, metric, budget in connection.execute("SELECT run_id, metric, budget_json FROM budgets"):
    costs.setdefault(run_id, {})[metric] = (json.loads(budget).get("cost") or {}).get("seconds")
metrics = sorted({m for c in costs.values() for m in c})
print("| model | fine-tuning s | images/s | " + " | ".join(f"{m} s" for m in metrics) + " | cell wall s |")
print("|---" * (4 + len(metrics)) + "|")
for run_id, method, train, speed, wall in runs:
    cells = [f"{costs.get(run_id, {}).get(m):.1f}" if costs.get(run_id, {}).get(m) is not None else "-"
             for m in metrics]
    print(f"| {method} | {'-' if train is None else f'{train:.1f}'} | {'-' if speed is None else f'{speed:.0f}'} | "
          + " | ".join(cells) + f" | {wall:.1f} |")
EOF
    echo
    echo "Total: $(seconds_since "$started") s."
} > "$work/report.md"

mkdir -p "$(dirname "$output")"
cp "$work/report.md" "$output"
rm -rf "$work"
echo "table1_pair: wrote $output in $(seconds_since "$started") s" >&2
