# Two commands set up and run everything: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-quick lint clean report-screenshot

# PyTorch is installed first, as the build named by TORCH_VARIANT (default: the CPU build) from
# PyTorch's own wheel index; a wheel of that build already on disk (pip's find-links, as on our CI
# machines) is taken without asking the index. PyPI's Linux torch is the CUDA build (~3 GB with its
# NVIDIA libraries), so the CPU build is never taken from there. GPU machines:
#   make setup TORCH_VARIANT=cu128      (any variant PyTorch publishes, e.g. cu126, cu128, rocm6.4)
# The constraints file then holds torch at that version while the rest installs.
TORCH_VERSION ?= 2.13.0
TORCH_VARIANT ?= cpu
TORCH_INDEX   ?= https://download.pytorch.org/whl/$(TORCH_VARIANT)
ifeq ($(shell uname -s),Darwin)
TORCH_SPEC := torch==$(TORCH_VERSION)
else
TORCH_SPEC := torch==$(TORCH_VERSION)+$(TORCH_VARIANT)
endif

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" 2>/dev/null \
	  || $(PIP) install -q --extra-index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints-cpu.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cosmoinfer-pipeline experiment=quickstart out_dir=runs/quickstart

# docs/report.png: the top of the demo's report.html in headless Chromium (apt-get install -y chromium),
# 1280 px wide as the report is laid out for. Runs the demo first only when its report is missing.
DEMO_REPORT := runs/quickstart/report/report.html
CHROMIUM    ?= chromium

$(DEMO_REPORT):
	$(MAKE) demo

report-screenshot: $(DEMO_REPORT)
	@command -v $(CHROMIUM) >/dev/null || { echo "report-screenshot needs Chromium: apt-get install -y chromium"; exit 1; }
	$(CHROMIUM) --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
	  --screenshot=$(abspath docs/report.png) file://$(abspath $(DEMO_REPORT))

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks pipelines

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
