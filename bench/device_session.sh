#!/usr/bin/env bash
# The GPU measurements of issue 6 (and Table 2), cut into parts that each end inside one 10-minute
# device call; three calls cover everything. Run from the repository root on the GPU machine:
#
#     bash bench/device_session.sh 1    # GPU tests + ViT-L/16: baseline, fast, each feature off (~9 min)
#     bash bench/device_session.sh 2    # ViT-B + ViT-H baseline/fast, CUDA graphs, max-autotune (~9 min)
#     bash bench/device_session.sh 3    # input paths (generated JPEGs) + Table 2 at mini scale (~9 min)
#     bash bench/device_session.sh plan # print the commands only
#
# Needs only what the device image has (torch, torchvision, timm, pandas, matplotlib, tqdm, yaml):
# the repository is put on PYTHONPATH, nothing is installed. CSVs go to results/ (with provenance
# columns) and, when $OUT is set (the device tool's output folder), are copied there with the logs.
set -uo pipefail
part="${1:-plan}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-outputs/device_session}"
mkdir -p "$out/results" "$out/logs"
py="${PYTHON:-python3}"
bench="$py bench/pretrain_throughput.py"
jpegs="outputs/bench_jpeg"

cmds=()
case "$part" in
  1|plan)
    cmds+=("$py -m pytest -q -m gpu -p no:cacheprovider tests/test_speed.py tests/test_gpu_input.py tests/test_pretrain.py tests/test_data_transforms.py")
    cmds+=("$bench --models vit_l --variants baseline,fast,fast-compile,fast-fused_adamw,fast-host_sync --out results/bench_h100_vit_l.csv")
    ;;&
  2|plan)
    cmds+=("$bench --models vit_b,vit_h --variants baseline,fast --out results/bench_h100_vit_b_h.csv")
    cmds+=("$bench --models vit_l --variants fast+cuda_graphs,fast+max_autotune --warmup 20 --out results/bench_h100_vit_l_more.csv")
    ;;&
  3|plan)
    cmds+=("$py bench/input_cost.py --jpeg-generate 20000 --jpeg-cache $jpegs --out results/bench_input_cost_h100_host.csv")
    cmds+=("$bench --models vit_l --inputs synthetic,jpeg_gpu,jpeg_worker,jpeg_cpu_u8,jpeg_cpu --variants fast,input_only --jpeg-generate 20000 --jpeg-cache $jpegs --steps 40 --repeats 2 --out results/bench_h100_input.csv")
    cmds+=("$py reproduce/table2.py --scale mini")
    ;;
  *)
    echo "usage: bash bench/device_session.sh 1|2|3|plan" >&2
    exit 2
    ;;
esac

if [ "$part" = plan ]; then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/logs/gpu.txt"
"$py" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/logs/gpu.txt"
status=0
for i in "${!cmds[@]}"; do
  echo "=== [$part.$i] ${cmds[$i]}" | tee -a "$out/logs/part$part.log"
  start=$(date +%s)
  # shellcheck disable=SC2086  # the commands are word lists by design
  ${cmds[$i]} 2>&1 | tee -a "$out/logs/part$part.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  echo "=== [$part.$i] exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out/logs/part$part.log"
  cp results/bench_*.csv results/table2_*.csv results/table2_*.meta.json "$out/results/" 2>/dev/null || true
done
exit $status
