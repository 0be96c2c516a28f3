# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates or reuses .venv and installs what it needs; torch is installed first and
# pinned so that no later install pulls another (multi-GB) torch from the network.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# The venv first on PATH: `deepspeed`, `mlflow` and the ninja that builds DeepSpeed's CPU op.
RUN := PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: setup sysdeps demo demo-seeds test test-slow lint docs

# Debian packages the code shells out to or loads: curl streams http(s) shards
# (zeroi2v/data/shards.py); torchcodec (data.decoder: torchcodec) loads the system's FFmpeg
# libraries (decord and PyAV bundle their own).
FFMPEG_LIBS := libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavfilter8 libavdevice59
sysdeps:
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)
	@ldconfig -p | grep -q libavdevice.so || (apt-get update -qq && apt-get install -y -qq $(FFMPEG_LIBS))

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,dev]' $(TORCH)
	touch $(STAMP)

setup: sysdeps $(STAMP)

demo: setup
	$(RUN) bash scripts/demo.sh

# The demo on seeds 0, 1 and 2 (data and pre-trained weights made once): one top-1 per seed.
demo-seeds: setup
	$(RUN) bash scripts/demo_seeds.sh

# The default suite in TEST_WORKERS pytest-xdist processes (each test still runs alone in one);
# the slow suite runs one test at a time: its full-size runs each fill the machine.
TEST_WORKERS ?= 2
test: setup
	$(RUN) $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=20

test-slow: setup
	$(RUN) $(PY) -m pytest -q -m slow

# The manual (docs/, mkdocs.yml) as a site in site/; --strict fails on a broken link or anchor.
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0, printed on every build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
