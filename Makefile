# neurOS cv — set-up, main job and tests.  `make bench` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
OUT    ?= results/bench
# Test processes (pytest-xdist): one per core of the 2-core machines the project runs on; 0 runs in-process.
TEST_WORKERS ?= 2

.PHONY: all setup browser qt-libs bench test lint clean

all: bench

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python >= 3.10)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the local CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,napari]"
	@touch $(STAMP)

setup: $(STAMP)

## First README command: set up and run the benchmark suite on its built-in default.
bench: $(STAMP)
	$(VENV)/bin/neuros-cv bench --out $(OUT) --overwrite

# The HTML report's browser test uses Debian's chromium (never a downloaded browser build); installed only
# when missing, and only where apt-get exists (CI runs as root on Debian).
browser:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null 2>&1 || \
		{ SUDO=$$(test "$$(id -u)" = 0 || echo sudo); $$SUDO apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

# The napari plugin's viewer tests draw napari's OpenGL canvas on a private virtual X server (Xvfb, Mesa in
# software) through Qt's xcb platform, which loads these libxcb libraries; installed only when one is missing,
# and only where apt-get exists (as the browser target).
QT_DEBS = xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 \
	libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0
qt-libs:
	@! command -v apt-get >/dev/null 2>&1 || dpkg -s $(QT_DEBS) >/dev/null 2>&1 || \
		{ SUDO=$$(test "$$(id -u)" = 0 || echo sudo); $$SUDO apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(QT_DEBS); }

## Second README command: set up and run the tests.
test: $(STAMP) browser qt-libs
	$(PY) -m ruff check src tests benchmarks create_advanced_notebook.py
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks create_advanced_notebook.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
