#!/bin/bash
# The GPU measurements of issue 17 (and the GPU tests), in parts that each fit one 10-minute device call:
#
#   bash bench/gpu_session.sh 1   # GPU tests, RN50x4 at 16,384 and ViT-L/14 at 65,536 JPEGs (bf16 rows)
#   bash bench/gpu_session.sh 2   # ViT-B/32 and ViT-L/14 at 16,384 (bf16 rows)
#   bash bench/gpu_session.sh 3   # ViT-L/14 at 65,536 (hard links of the 16k files), atlas defaults and naive bf16
#   bash bench/gpu_session.sh 4   # issue 18: the probe path at ImageNet scale (1.28M x 2,560 x 1,000, bf16)
#   bash bench/gpu_session.sh 5   # issue 20: SAE trainer vs a plain loop; a whole `atlas sae train` on 10M vectors
#   bash bench/gpu_session.sh 6   # issue 21, on a 2-GPU kind: RN50x4 on 1 and 2 GPUs (torchrun), store check
#
# Wheels the device lacks go in .whl/ (see /work/.library/device/README.md); logs go to $OUT (or ./gpu-logs).
# Each part writes the JPEGs it needs (16k mixed sizes: about 70 s on 16 cores).
set -o pipefail
case "$1" in 1|2|3|4|5|6) ;; *) echo "usage: bash bench/gpu_session.sh 1|2|3|4|5|6" >&2; exit 2 ;; esac
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
# the JPEGs: 16k written once, the larger folders hard links to them (part 5: 147,456 for the SAE's 10M vectors)
LINKS="/tmp/j2k:2048:1 /tmp/j64k:65536:4"; [ "$1" = 5 ] && LINKS="/tmp/j144k:147456:9"
[ "$1" = 4 ] || python3 - $LINKS <<'PY'
import os, sys
from pathlib import Path
sys.path.insert(0, "bench")
from data_path import write_jpegs
src = Path("/tmp/j16k")
if len(list(src.glob("*.jpg"))) != 16384:
    src.mkdir(exist_ok=True)
    write_jpegs(src, 16384, mixed=True)
files = sorted(src.glob("*.jpg"))
for spec in sys.argv[1:]:
    folder, n, copies = spec.split(":")
    n, copies = int(n), int(copies)
    os.makedirs(folder, exist_ok=True)
    if len(os.listdir(folder)) != n:
        for c in range(copies):
            for f in files[:n // copies]:
                target = Path(folder) / f"{c}{f.name}"
                if not target.exists():
                    os.link(f, target)
PY
B="python3 bench/mine_vs_naive.py"
R="naive bfloat16,atlas defaults"
case "$1" in
1)  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_pixels.py tests/test_verify.py tests/test_kernels.py \
        tests/test_fused_graphs.py tests/test_mine.py -k gpu 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
    timeout 150 $B --n 16384 --models RN50x4 --folder /tmp/j16k --rows "$R" 2>&1 | tee "$OUT/rn50x4_16k.log"
    timeout 230 $B --n 65536 --models ViT-L-14 --folder /tmp/j64k --rows "$R" 2>&1 | tee "$OUT/vitl_64k.log" ;;
2)  $B --n 16384 --models ViT-B-32,ViT-L-14 --folder /tmp/j16k --rows "$R" 2>&1 | tee "$OUT/vit_16k.log" ;;
3)  $B --n 65536 --models ViT-L-14 --folder /tmp/j64k --rows "$R" 2>&1 | tee "$OUT/vitl_64k.log" ;;
4)  timeout 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py tests/test_probes.py \
        -k "softmax or solver or half or fista or probe or kernel" 2>&1 | tail -4 | tee "$OUT/gpu_tests.log"
    timeout 480 python3 bench/probe_path.py --no-peer 2>&1 | tee "$OUT/probe_path.log" ;;
5)  timeout 170 python3 bench/sae_vs_naive.py --device cuda --n 1000000 --d 2560 --width 40960 --k 32 --batch 4096 \
        --steps 200 2>&1 | tee "$OUT/sae_vs_naive.log"
    # a whole `atlas sae train` on 10M vectors of 2,560 units at 16x: RN50x4's last block (9 x 9 positions at 288 px)
    # on 137,175 images, of which 10% are held out: 0.9 x 137,175 x 81 = 10.0M training rows, 2,442 steps of 4,096
    python3 -m atlas mine --model open_clip:RN50x4@random:0 --data /tmp/j16k --max-images 512 --layers visual.layer4.5 \
        --store /tmp/sae/s.h5 2>&1 | tail -2
    timeout 330 /usr/bin/time -v python3 -m atlas sae train --store /tmp/sae/s.h5 --layer visual.layer4.5 --width 16x \
        --k 32 --batch 4096 --steps 2442 --data /tmp/j144k --max-images 137175 --no-eval 2>&1 | tee "$OUT/sae_10m.log" ;;
6)  timeout 560 python3 bench/scale_gpus.py --nproc 2 --device auto --data /tmp/j16k --model open_clip:RN50x4@random:0 \
        --precision bfloat16 2>&1 | tee "$OUT/scale_gpus.log" ;;
esac
