#!/usr/bin/env bash
# tests/gpu/run.sh - every GPU check of the CUDA backend in one run, for a
# machine with an NVIDIA GPU (written for one H200: under 8 minutes in all).
#
#   1. build with CUDA (the CUDA module, every test_cuda_* test, bench_gpu,
#      and the programs when there are GPU pipeline tests; device code for
#      CUDA_ARCHS, default 90 = H100/H200). A GPU machine without the build
#      dependencies (pkg-config modules of the Makefile, protoc-c, nvcc) uses
#      a bundle made beforehand by `tests/gpu/run.sh --prepare` on a machine
#      that has them: $NB_BUILD/gpu-bundle.tar.xz, the same files plus the
#      shared libraries they need beyond libc and CUDA's own;
#   2. every $NB_BUILD/tests/**/test_cuda_* binary on the real module: a
#      skipped test is a FAILURE here (on a GPU machine nothing may skip);
#   3. the GPU pipeline tests, tests/pipeline/pipeline-cuda*.test.sh, if any
#      (exit 77 = skipped = a failure here too);
#   4. bench_gpu (docs/benchmarks.md, "GPU"), whose "bench ..." lines must all
#      be there with finite positive values.
# Every step runs under `timeout`, inside one overall budget (NB_GPU_BUDGET_S,
# default 460 s) that keeps NB_GPU_BENCH_RESERVE_S (default 170 s) for the
# benchmark; a failing step does not stop the run. The summary (GPU name,
# driver, pass/fail of each step, the bench lines) goes to
# $OUT/gpu-summary.txt when $OUT is set, else $NB_BUILD/gpu-summary.txt, and
# is written as the run goes, so a run cut short still leaves what it did.
# Logs: $NB_BUILD/gpu-logs/, and with $OUT also $OUT/gpu-logs.tar.gz.
#
# Usage: tests/gpu/run.sh [--skip-build] [--only tests|bench]
#        tests/gpu/run.sh --prepare     (build and pack the bundle; no GPU needed)
# Environment: NB_BUILD (build directory, default build/gpu, apart from the
# CPU build), NB_JOBS (make -j, default 16), CUDA_ARCHS (default 90),
# NB_GPU_USE_BUNDLE=1 (use the bundle even where the build could run).
# Exit 0 when every step passed, 1 otherwise. docs/operations.md, "Running
# the GPU checks".
set -u
case "${OUT:-}" in ''|/*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
build=${NB_BUILD:-build/gpu}  # as given: make's BUILD (relative to the tree's root)
case "$build" in /*) build_abs=$build ;; *) build_abs="$root/$build" ;; esac
jobs=${NB_JOBS:-16}
archs=${CUDA_ARCHS:-90}
budget=${NB_GPU_BUDGET_S:-460}
reserve=${NB_GPU_BENCH_RESERVE_S:-170}
skip_build=0 only=all prepare=0
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-build) skip_build=1 ;;
    --only) shift; only=${1:-} ;;
    --prepare) prepare=1 ;;
    *) echo "usage: $0 [--skip-build] [--only tests|bench] | --prepare" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in all|tests|bench) ;; *) echo "--only takes tests or bench" >&2; exit 2 ;; esac

if [ -n "${OUT:-}" ]; then dest=$OUT; else dest=$build; fi
mkdir -p "$dest" "$build" || exit 1
summary="$dest/gpu-summary.txt"
logs="$build/gpu-logs"
rm -rf "$logs" && mkdir -p "$logs" || exit 1
: > "$summary"
# With $OUT, the logs go there as one archive (few files travel back well),
# also when the run is cut short.
pack_logs() {
  if [ -n "${OUT:-}" ]; then tar -C "$build" -czf "$OUT/gpu-logs.tar.gz" gpu-logs 2>/dev/null; fi
  return 0
}
trap pack_logs EXIT
trap 'exit 143' TERM INT
start=$(date +%s)
npass=0 nfail=0

say() { echo "$*" | tee -a "$summary"; }
elapsed() { echo $(( $(date +%s) - start )); }
# Seconds a step may take: its own limit, cut to what is left of the budget
# (minus what must stay for later steps), at least 5.
limit_for() {
  local want=$1 keep=${2:-0} left
  left=$(( budget - $(elapsed) - keep ))
  if [ "$left" -lt "$want" ]; then want=$left; fi
  if [ "$want" -lt 5 ]; then want=5; fi
  echo "$want"
}
# step NAME STATUS DETAIL: one summary line; STATUS PASS or FAIL.
step() {
  if [ "$2" = PASS ]; then npass=$((npass + 1)); else nfail=$((nfail + 1)); fi
  say "$(printf 'step %-34s %s  %s' "$1" "$2" "$3")"
}
# Runs a command under timeout (first argument: seconds); its exit status,
# 124 when the time ran out.
run_limited() {
  local secs=$1; shift
  timeout --kill-after=10 "$secs" "$@"
}

say "# nebula GPU checks, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "commit: $(run_limited 10 git rev-parse --short HEAD 2>/dev/null || echo unknown)"
n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
n_gpus=${n_gpus:-0}
gpu=$(run_limited 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader -i 0 2>&1)
smi_rc=$?
if [ $smi_rc -eq 0 ] && [ -n "$gpu" ]; then
  say "gpu: $gpu (name, driver, memory, compute capability)"
else
  say "gpu: none visible (nvidia-smi exit $smi_rc: $(echo "$gpu" | head -n1))"
fi
nvcc_bin=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || echo "")
say "nvcc: ${nvcc_bin:-not found} $( [ -n "$nvcc_bin" ] && "$nvcc_bin" --version 2>/dev/null | sed -n 's/.*release \([^,]*\).*/release \1/p')"
say "budget: ${budget} s (bench reserve ${reserve} s); build dir: $build"

# ---- the tests and what to build --------------------------------------------
shopt -s nullglob globstar
test_srcs=(tests/**/test_cuda_*.c)
test_bins=()
for s in "${test_srcs[@]}"; do test_bins+=("$build/${s%.c}"); done
# NB_GPU_PIPE_GLOB (set, maybe empty) replaces the GPU pipeline tests' glob
if [ -n "${NB_GPU_PIPE_GLOB+set}" ]; then
  pipe_tests=($NB_GPU_PIPE_GLOB)
else
  pipe_tests=(tests/pipeline/pipeline-cuda*.test.sh)
fi
module="$build/lib/libnebula-cuda.so"
module_abs="$build_abs/lib/libnebula-cuda.so"
bench="$build/bench/bench_gpu"

# ---- 1. build (or unpack the prepared bundle) -------------------------------------
bundle="$build/gpu-bundle.tar.xz"
pkgs=$(sed -n 's/^PKGS := //p' Makefile)
missing_deps() {
  local m=""
  for p in $pkgs; do pkg-config --exists "$p" 2>/dev/null || m="$m $p"; done
  command -v protoc-c >/dev/null || m="$m protoc-c"
  [ -n "$nvcc_bin" ] || m="$m nvcc"
  echo "${m# }"
}
targets=("$module" "$bench" "${test_bins[@]}")
if [ ${#pipe_tests[@]} -gt 0 ]; then targets+=(bins); fi
if [ "$only" = bench ] && [ $prepare -eq 0 ]; then targets=("$module" "$bench"); fi
do_build() {
  local secs=$1
  # -k: a target that fails to build does not stop the others.
  run_limited "$secs" make -k -j"$jobs" CUDA=1 CUDA_ARCHS="$archs" BUILD="$build" "${targets[@]}" \
    > "$logs/build.log" 2>&1
}
# Shared libraries the built programs load that a GPU machine may lack: all
# but the C library, the compiler's runtime and CUDA's (the GPU machine's
# own toolkit provides those).
runtime_libs() {
  local f
  for f in "$@"; do [ -e "$f" ] && ldd "$f" 2>/dev/null; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
    grep -vE '/(ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnvidia[^/]*)\.so'
}

if [ $prepare -eq 1 ]; then
  m=$(missing_deps)
  [ -z "$m" ] || { say "prepare: missing build dependencies: $m"; exit 1; }
  do_build 3600 || { say "prepare: build failed (gpu-logs/build.log)"; tail -n 30 "$logs/build.log"; exit 1; }
  stage="$build/.bundle"
  rm -rf "$stage" && mkdir -p "$stage/runtime-libs" || exit 1
  files=("$module" "$bench")
  for t in "${test_bins[@]}"; do [ -x "$t" ] && files+=("$t"); done
  if [ ${#pipe_tests[@]} -gt 0 ]; then for f in "$build"/bin/*; do files+=("$f"); done; fi
  for f in "${files[@]}"; do
    rel=${f#"$build"/}
    mkdir -p "$stage/$(dirname "$rel")" && cp -p "$f" "$stage/$rel" && strip --strip-debug "$stage/$rel" || exit 1
  done
  for l in $(runtime_libs "${files[@]}"); do cp -pL "$l" "$stage/runtime-libs/" || exit 1; done
  echo "made $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -n), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(ldd --version | head -n1)" \
    > "$stage/BUNDLE-INFO"
  tar -C "$stage" -cJf "$bundle" . || exit 1
  rm -rf "$stage"
  say "prepare: $bundle ($(du -h "$bundle" | cut -f1)); carry it to the GPU machine's $build"
  tar -tJf "$bundle" | sed 's/^/  /'
  exit 0
fi

if [ $skip_build -eq 0 ]; then
  t0=$(date +%s)
  m=$(missing_deps)
  if [ "${NB_GPU_USE_BUNDLE:-0}" = 1 ]; then m="${m:-nothing (NB_GPU_USE_BUNDLE=1)}"; fi
  if [ -n "$m" ] && [ -f "$bundle" ]; then
    # No build here: the bundle's programs, with its libraries.
    if run_limited 120 tar -C "$build" -xJf "$bundle" > "$logs/build.log" 2>&1; then
      step build PASS "(prebuilt bundle, $(cat "$build/BUNDLE-INFO" 2>/dev/null); this machine lacks: $m)"
    else
      step build FAIL "(cannot unpack $bundle; gpu-logs/build.log)"
    fi
  elif [ -n "$m" ]; then
    step build FAIL "(missing build dependencies: $m; and no $bundle: make one with tests/gpu/run.sh --prepare where they are)"
  else
    secs=$(limit_for 300 "$reserve")
    do_build "$secs"
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
      step build PASS "(${dt} s, sm_${archs// /+sm_})"
    else
      if [ $rc -eq 124 ]; then why="timed out after ${secs} s"; else why="make exit $rc"; fi
      step build FAIL "($why, ${dt} s; gpu-logs/build.log)"
      grep -E 'error|Error' "$logs/build.log" | head -n 20 | sed 's/^/  | /' | tee -a "$summary"
      # Another compiler may refuse what the prepared one took (-Werror):
      # the bundle's programs still give the tests and figures.
      if [ -f "$bundle" ] && run_limited 120 tar -C "$build" -xJf "$bundle" >> "$logs/build.log" 2>&1; then
        say "# the steps below use the prepared bundle instead ($(cat "$build/BUNDLE-INFO" 2>/dev/null))"
      fi
    fi
  fi
fi
# The bundle's libraries, and CUDA's libraries where the module does not find
# them by its run path (a toolkit elsewhere, or only pip's nvidia-* wheels).
if [ -d "$build/runtime-libs" ]; then export LD_LIBRARY_PATH="$build_abs/runtime-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
if [ -f "$module" ] && ldd "$module" 2>/dev/null | grep -q 'not found'; then
  for lib in $(ldd "$module" | awk '/not found/ { print $1 }'); do
    d=$(run_limited 30 find /usr/local /opt /usr/lib /usr/lib64 -maxdepth 8 -name "$lib" 2>/dev/null | head -n1)
    if [ -n "$d" ]; then export LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  done
  say "cuda libraries: the module's run path lacked some; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$module" | grep 'not found' | sed 's/^/  still /' | tee -a "$summary"
fi

# ---- 2. CUDA tests on the real module -------------------------------------------
if [ "$only" != bench ]; then
  [ ${#test_bins[@]} -gt 0 ] || step "test_cuda_*" FAIL "(no tests/**/test_cuda_*.c found)"
  for t in "${test_bins[@]}"; do
    name=$(basename "$t")
    log="$logs/$name.log"
    if [ ! -x "$t" ]; then
      step "$name" FAIL "(not built)"
      continue
    fi
    t0=$(date +%s)
    secs=$(limit_for 120 "$reserve")
    NEBULA_CUDA_MODULE="$module_abs" run_limited "$secs" "$t" > "$log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      step "$name" FAIL "(timed out after ${secs} s; $p passed before)"
    elif [ "$k" -gt 0 ] && [ "$f" -eq 0 ] && [ "$n_gpus" -lt 2 ] && grep -q 'two CUDA devices unavailable' "$log"; then
      # the two-replica test needs two GPUs; one GPU runs the single rank
      # (test_cuda_allreduce) instead
      step "$name" PASS "($p tests; $k need two GPUs, $n_gpus here)"
    elif [ "$k" -gt 0 ]; then
      step "$name" FAIL "(SKIPPED $k on the GPU machine: $(grep -m1 -iE 'skip|unavailable|no cuda|cannot' "$log" | head -c 160))"
    elif [ $rc -ne 0 ] || [ "$f" -gt 0 ] || [ "$p" -eq 0 ]; then
      step "$name" FAIL "($f of $((p + f)) failed, exit $rc, ${dt} s)"
      grep -E '^\[  (FAILED|ERROR) *\]|[Ff]ailure|assert' "$log" | head -n 10 | sed 's/^/  | /' | tee -a "$summary"
    else
      step "$name" PASS "($p tests, ${dt} s)"
    fi
  done

  # ---- 3. the GPU pipeline tests ---------------------------------------------------
  if [ ${#pipe_tests[@]} -eq 0 ]; then
    say "# no tests/pipeline/pipeline-cuda*.test.sh in this tree: none run"
  fi
  for t in "${pipe_tests[@]}"; do
    name=$(basename "$t" .test.sh)
    log="$logs/$name.log"
    t0=$(date +%s)
    secs=$(limit_for 150 "$reserve")
    NB_BUILD="$build" NEBULA_CUDA_MODULE="$module_abs" NB_TEST_CUDA_MODULE="$module_abs" \
      run_limited "$secs" bash "$t" > "$log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    case $rc in
      0) step "$name" PASS "(${dt} s)" ;;
      77) step "$name" FAIL "(SKIPPED on the GPU machine: $(tail -n1 "$log" | head -c 160))" ;;
      124|137) step "$name" FAIL "(timed out after ${secs} s)" ;;
      *) step "$name" FAIL "(exit $rc, ${dt} s)"; tail -n 10 "$log" | sed 's/^/  | /' | tee -a "$summary" ;;
    esac
  done
fi

# ---- 4. the GPU benchmarks ----------------------------------------------------------
if [ "$only" != tests ]; then
  log="$logs/bench_gpu.log"
  if [ ! -x "$bench" ]; then
    step bench_gpu FAIL "(not built)"
  else
    t0=$(date +%s)
    secs=$(limit_for 300 0)
    NEBULA_CUDA_MODULE="$module_abs" run_limited "$secs" "$bench" > "$log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    expect="gpu_gpt2_124m_fp32_tokens_per_s gpu_gpt2_124m_fp32_mfu gpu_attention_vs_matmul_ratio"
    for c in fp16 bf16 int8 int4 topk; do expect="$expect gpu_codec_${c}_vs_memcpy"; done
    missing="" bad=""
    for n in $expect; do
      v=$(awk -v n="$n" '$1 == "bench" && $2 == n { print $3; exit }' "$log")
      if [ -z "$v" ]; then missing="$missing $n"
      elif ! awk -v v="$v" 'BEGIN { exit !(v + 0 > 0 && v + 0 < 1e300) }'; then bad="$bad $n=$v"
      fi
    done
    detail="exit $rc, ${dt} s"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then detail="timed out after ${secs} s"; fi
    grep -q '^# bench_gpu skipped' "$log" && detail="$detail; SKIPPED: $(grep -m1 '^# bench_gpu skipped' "$log")"
    if [ -n "$missing" ]; then detail="$detail; missing:$missing"; fi
    if [ -n "$bad" ]; then detail="$detail; not finite positive:$bad"; fi
    if [ $rc -eq 0 ] && [ -z "$missing" ] && [ -z "$bad" ]; then
      step bench_gpu PASS "($detail)"
    else
      step bench_gpu FAIL "($detail)"
    fi
    # the notes (shapes, peak used, per-part times) and every bench line
    grep -E '^# (gpt2|MFU|no MFU|attention|codec|bench_gpu)' "$log" | sed 's/^/  /' | tee -a "$summary"
    grep '^bench ' "$log" | tee -a "$summary"
  fi
fi

say "result: $npass passed, $nfail failed, $(elapsed) s in all"
[ $nfail -eq 0 ]
